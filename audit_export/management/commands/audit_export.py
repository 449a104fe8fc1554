"""``manage.py audit_export --once``: send what is pending to the Audit Record Repository now."""

from __future__ import annotations

import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit_export import run


class Command(BaseCommand):
    help = ("Seal the audit trail and send every record after the repository's cursor to "
            "AUDIT_REPOSITORY_URL; with --once a single pass, else a pass every AUDIT_EXPORT_SECONDS.")

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="one pass, print the counts, exit (1 on failure)")

    def handle(self, *args, once: bool = False, **options):
        sender = run.configured_sender()
        if sender is None:
            raise CommandError("AUDIT_REPOSITORY_URL is not set: the audit trail is kept here only")
        while True:
            outcome = run.export_pending(sender)
            self.stdout.write(self._line(outcome))
            if once:
                if outcome.error:
                    raise CommandError(f"not everything was sent: {outcome.error}")
                return
            time.sleep(settings.AUDIT_EXPORT_SECONDS)

    @staticmethod
    def _line(outcome: run.Outcome) -> str:
        if outcome.busy:
            return f"{outcome.repository}: another exporter is sending; {outcome.pending} record(s) pending"
        return (f"{outcome.repository}: {outcome.sent} record(s) sent, cursor at seq {outcome.cursor}, "
                f"{outcome.pending} record(s) pending")
