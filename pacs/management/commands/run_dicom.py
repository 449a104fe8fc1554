"""``manage.py run_dicom``: the engine's DICOM AE (Verification, MWL C-FIND, MPPS, C-STORE)."""

from __future__ import annotations

import os
import signal
import socket

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from pacs.dimse.server import start_server


class Command(BaseCommand):
    help = "Run the DICOM listener (AE DICOM_AE_TITLE on DICOM_PORT)."
    requires_system_checks = "__all__"

    def add_arguments(self, parser):
        parser.add_argument("--host", default=None, help="address to bind (default DICOM_HOST)")
        parser.add_argument("--port", type=int, default=None, help="port (default DICOM_PORT; 0 = any free)")
        parser.add_argument("--workers", type=int, default=1,
                            help="listener processes sharing the port with SO_REUSEPORT (default 1)")

    def handle(self, *args, host=None, port=None, workers=1, **options):
        if workers < 1:
            raise CommandError("--workers must be at least 1")
        host = settings.DICOM_HOST if host is None else host
        port = settings.DICOM_PORT if port is None else port
        if port == 0 and workers > 1:
            with socket.socket() as probe:  # one free port for every worker
                probe.bind((host, 0))
                port = probe.getsockname()[1]
        connections.close_all()  # no database connection may cross a fork
        children = []
        for _ in range(workers - 1):
            pid = os.fork()
            if pid == 0:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                try:
                    start_server(host, port, block=True, reuse_port=True)
                finally:
                    os._exit(0)
            children.append(pid)

        def stop(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        self.stdout.write(f"DICOM AE {settings.DICOM_AE_TITLE} listening on {host}:{port} workers={workers}")
        self.stdout.flush()
        try:
            start_server(host, port, block=True, reuse_port=workers > 1)
        finally:
            for pid in children:
                try:
                    os.kill(pid, signal.SIGTERM)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
