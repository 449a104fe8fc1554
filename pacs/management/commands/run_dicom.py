"""``manage.py run_dicom``: the engine's DICOM AE (Verification, MWL C-FIND, MPPS, C-STORE), on
DICOM_PORT and, with TLS_CERTIFICATE set, on DICOM_TLS_PORT over TLS (PS3.15 B.9)."""

from __future__ import annotations

import socket

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit.processes import application_activity
from pacs.dimse.server import start_server, tls_enabled
from project.prefork import fork_workers, hold_termination, release_termination, stop_workers
from project.tls import TLSConfigurationError, server_context


def _free_port(host: str) -> int:
    """One free port for every worker (--port 0 with --workers above 1)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class Command(BaseCommand):
    help = "Run the DICOM listener (AE DICOM_AE_TITLE on DICOM_PORT, and on DICOM_TLS_PORT over TLS)."
    requires_system_checks = "__all__"

    def add_arguments(self, parser):
        parser.add_argument("--host", default=None, help="address to bind (default DICOM_HOST)")
        parser.add_argument("--port", type=int, default=None, help="port (default DICOM_PORT; 0 = any free)")
        parser.add_argument("--tls-port", type=int, default=None,
                            help="TLS port (default DICOM_TLS_PORT; 0 = none; used when TLS_CERTIFICATE is set)")
        parser.add_argument("--workers", type=int, default=1,
                            help="listener processes sharing the ports with SO_REUSEPORT (default 1)")

    def handle(self, *args, host=None, port=None, tls_port=None, workers=1, **options):
        if workers < 1:
            raise CommandError("--workers must be at least 1")
        held = hold_termination()
        host = settings.DICOM_HOST if host is None else host
        port = settings.DICOM_PORT if port is None else port
        tls_port = settings.DICOM_TLS_PORT if tls_port is None else tls_port
        with_tls = tls_enabled(tls_port)
        if with_tls:
            try:  # the files are read before any worker starts, so a bad one stops the command
                server_context(settings.DICOM_TLS_CLIENT_CERTIFICATES)
            except TLSConfigurationError as exc:
                raise CommandError(f"DICOM TLS: {exc}") from exc
        if port == 0 and workers > 1:
            port = _free_port(host)
        children = fork_workers(workers - 1, lambda: start_server(host, port, block=True, reuse_port=True,
                                                                  tls_port=tls_port))

        def stop(signum, frame):
            raise KeyboardInterrupt

        tls_text = f" tls={tls_port} client_certificates={settings.DICOM_TLS_CLIENT_CERTIFICATES}" if with_tls else ""
        self.stdout.write(f"DICOM AE {settings.DICOM_AE_TITLE} listening on {host}:{port}{tls_text} workers={workers}")
        self.stdout.flush()
        application_activity("dicom", started=True)  # the audit trail (PS3.15 A.5.3.1), after the fork
        try:
            release_termination(held, stop)
            start_server(host, port, block=True, reuse_port=workers > 1, tls_port=tls_port)
        finally:
            stop_workers(children)
            application_activity("dicom", started=False)
