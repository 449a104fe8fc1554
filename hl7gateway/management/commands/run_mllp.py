"""``manage.py run_mllp``: the inbound HL7 MLLP listener (see ``hl7gateway.server``)."""

from __future__ import annotations

import os
import signal
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from hl7gateway.server import MLLPServer, listening_socket


class Command(BaseCommand):
    help = "Run the HL7 MLLP listener (HL7_MLLP_HOST:HL7_MLLP_PORT): store, apply, then ACK."
    requires_system_checks = "__all__"

    def add_arguments(self, parser):
        parser.add_argument("--host", default=None, help="address to bind (default HL7_MLLP_HOST)")
        parser.add_argument("--port", type=int, default=None, help="port (default HL7_MLLP_PORT; 0 = any free)")
        parser.add_argument("--workers", type=int, default=1,
                            help="listener processes sharing the port with SO_REUSEPORT (default 1)")

    def handle(self, *args, host=None, port=None, workers=1, **options):
        if workers < 1:
            raise CommandError("--workers must be at least 1")
        host = settings.HL7_MLLP_HOST if host is None else host
        port = settings.HL7_MLLP_PORT if port is None else port
        sock = listening_socket(host, port, reuse_port=workers > 1)
        port = sock.getsockname()[1]
        connections.close_all()  # no database connection may cross a fork
        children = []
        for _ in range(workers - 1):
            pid = os.fork()
            if pid == 0:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                server = MLLPServer(host, sock=listening_socket(host, port, reuse_port=True))
                sock.close()
                try:
                    server.serve_forever()
                finally:
                    os._exit(0)
            children.append(pid)
        server = MLLPServer(host, sock=sock)

        def stop(signum, frame):
            for pid in children:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            server._stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.stdout.write(f"MLLP listening on {host}:{port} workers={workers}")
        self.stdout.flush()
        sys.stdout.flush()
        try:
            server.serve_forever()
        finally:
            server.stop(timeout=2)
            for pid in children:
                try:
                    os.kill(pid, signal.SIGTERM)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
