"""``manage.py run_mllp``: the inbound HL7 MLLP listeners (see ``hl7gateway.server``): clear
text on HL7_MLLP_PORT and, when HL7_MLLP_TLS_PORT is set, MLLP over TLS on that port, both in
every listener process."""

from __future__ import annotations

import signal
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit.processes import application_activity
from hl7gateway.server import MLLPServer, listening_socket
from project.prefork import fork_workers, hold_termination, release_termination, signal_workers, stop_workers
from project.tls import TLSConfigurationError, server_context


class Command(BaseCommand):
    help = ("Run the HL7 MLLP listeners (HL7_MLLP_HOST:HL7_MLLP_PORT, and MLLP over TLS on HL7_MLLP_TLS_PORT): "
            "store, apply, then ACK.")
    requires_system_checks = "__all__"

    def add_arguments(self, parser):
        parser.add_argument("--host", default=None, help="address to bind (default HL7_MLLP_HOST)")
        parser.add_argument("--port", type=int, default=None, help="port (default HL7_MLLP_PORT; 0 = any free)")
        parser.add_argument("--tls-port", type=int, default=None,
                            help="MLLP over TLS port (default HL7_MLLP_TLS_PORT; 0 = off)")
        parser.add_argument("--workers", type=int, default=1,
                            help="listener processes sharing the ports with SO_REUSEPORT (default 1)")

    def handle(self, *args, host=None, port=None, tls_port=None, workers=1, **options):
        if workers < 1:
            raise CommandError("--workers must be at least 1")
        held = hold_termination()
        host = settings.HL7_MLLP_HOST if host is None else host
        port = settings.HL7_MLLP_PORT if port is None else port
        tls_port = settings.HL7_MLLP_TLS_PORT if tls_port is None else tls_port
        context = None
        if tls_port:
            try:
                context = server_context(settings.HL7_MLLP_TLS_CLIENT_CERTIFICATES)
            except (TLSConfigurationError, ValueError) as exc:
                raise CommandError(f"MLLP over TLS (HL7_MLLP_TLS_PORT={tls_port}): {exc}") from exc
        sock = listening_socket(host, port, reuse_port=workers > 1)
        port = sock.getsockname()[1]
        tls_sock = listening_socket(host, tls_port, reuse_port=workers > 1) if context else None
        tls_port = tls_sock.getsockname()[1] if tls_sock else 0

        def serve_child():
            child = MLLPServer(host, sock=listening_socket(host, port, reuse_port=True))
            child_tls = (MLLPServer(host, sock=listening_socket(host, tls_port, reuse_port=True),
                                    tls_context=context).start() if context else None)
            sock.close()
            if tls_sock is not None:
                tls_sock.close()
            try:
                child.serve_forever()
            finally:
                if child_tls is not None:
                    child_tls.stop(timeout=2)

        children = fork_workers(workers - 1, serve_child)
        server = MLLPServer(host, sock=sock)
        tls_server = MLLPServer(host, sock=tls_sock, tls_context=context).start() if tls_sock else None

        def stop(signum, frame):
            signal_workers(children)
            server._stopping.set()

        signal.signal(signal.SIGINT, stop)
        release_termination(held, stop)
        application_activity("mllp", started=True)  # the audit trail (PS3.15 A.5.3.1), after the fork
        listening = f"MLLP listening on {host}:{port}"
        if tls_server is not None:
            listening += f" tls={tls_port} client_certificates={settings.HL7_MLLP_TLS_CLIENT_CERTIFICATES}"
        self.stdout.write(f"{listening} workers={workers}")
        self.stdout.flush()
        sys.stdout.flush()
        try:
            server.serve_forever()
        finally:
            server.stop(timeout=2)
            if tls_server is not None:
                tls_server.stop(timeout=2)
            stop_workers(children)
            application_activity("mllp", started=False)
