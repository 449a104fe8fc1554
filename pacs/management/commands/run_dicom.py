"""``manage.py run_dicom``: the engine's DICOM AE (Verification, MWL C-FIND, MPPS, C-STORE)."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand

from pacs.dimse.server import start_server


class Command(BaseCommand):
    help = "Run the DICOM listener (AE DICOM_AE_TITLE on DICOM_PORT)."
    requires_system_checks = "__all__"

    def add_arguments(self, parser):
        parser.add_argument("--host", default=None, help="address to bind (default DICOM_HOST)")
        parser.add_argument("--port", type=int, default=None, help="port (default DICOM_PORT; 0 = any free)")

    def handle(self, *args, host=None, port=None, **options):
        self.stdout.write(f"DICOM AE {settings.DICOM_AE_TITLE} listening on {host or settings.DICOM_HOST}:"
                          f"{settings.DICOM_PORT if port is None else port}")
        self.stdout.flush()
        start_server(host, port, block=True)
