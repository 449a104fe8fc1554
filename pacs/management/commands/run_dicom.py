"""``manage.py run_dicom``: the engine's DICOM AE (Verification, MWL C-FIND, MPPS, C-STORE)."""

from __future__ import annotations

import signal
import socket

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from pacs.dimse.server import start_server
from pacs.prefork import fork_workers, stop_workers


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
        children = fork_workers(workers - 1, lambda: start_server(host, port, block=True, reuse_port=True))

        def stop(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        self.stdout.write(f"DICOM AE {settings.DICOM_AE_TITLE} listening on {host}:{port} workers={workers}")
        self.stdout.flush()
        try:
            start_server(host, port, block=True, reuse_port=workers > 1)
        finally:
            stop_workers(children)
