"""``manage.py run_mllp``: the inbound HL7 MLLP listener (see ``hl7gateway.server``)."""

from __future__ import annotations

import signal
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from hl7gateway.server import MLLPServer, listening_socket
from pacs.prefork import fork_workers, signal_workers, stop_workers


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

        def serve_child():
            child = MLLPServer(host, sock=listening_socket(host, port, reuse_port=True))
            sock.close()
            child.serve_forever()

        children = fork_workers(workers - 1, serve_child)
        server = MLLPServer(host, sock=sock)

        def stop(signum, frame):
            signal_workers(children)
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
            stop_workers(children)
