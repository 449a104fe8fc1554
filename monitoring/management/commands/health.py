"""``manage.py health web|mllp|dicom|worker|beat``: a container healthcheck.

Prints one JSON line ``{"process": ..., "status": "ok"|"failed", "checks": {name: bool}}``
and exits 0 when every check passed, 1 otherwise.  No patient data, no version details.
See ``monitoring.health`` for what each process type checks.
"""

from __future__ import annotations

import json
import sys

from django.core.management.base import BaseCommand

from monitoring import health


class Command(BaseCommand):
    help = "Check one process type (listener accepts, database and broker answer); exit 0 if healthy."
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("process", choices=["web", "mllp", "dicom", "worker", "beat"])
        parser.add_argument("--host", default=None, help="listener address (default: the process's setting)")
        parser.add_argument("--port", type=int, default=None, help="listener port (default: the process's setting)")
        parser.add_argument("--timeout", type=float, default=3.0)

    def handle(self, *args, process, host, port, timeout, **options):
        checks = health.check(process, host=host, port=port, timeout=timeout)
        ok = all(checks.values())
        self.stdout.write(json.dumps({"process": process, "status": "ok" if ok else "failed", "checks": checks}))
        self.stdout.flush()
        if not ok:
            sys.exit(1)
