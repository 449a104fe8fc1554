"""``manage.py verify_audit``: recompute the audit trail's hash chain; exit status 1 on any break.
With ``--keep`` the result is kept for the audit page (as the periodic ``audit.verify`` does)."""

from __future__ import annotations

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError

from audit import chain


class Command(BaseCommand):
    help = "Verify the audit trail's hash chain (seals nothing); exit status 1 on any break."

    def add_arguments(self, parser):
        parser.add_argument("--unsealed-after-minutes", type=float, default=10.0,
                            help="report unsealed records older than this (default 10)")
        parser.add_argument("--keep", action="store_true",
                            help="keep the result for the audit page's chain status (unsealed after 10 minutes)")

    def handle(self, *args, **options):
        if options["keep"]:
            kept = chain.check()
            self.stdout.write(f"{kept.checked} records checked, {kept.break_count} breaks")
            for found in kept.breaks:
                self.stdout.write(f"{found['kind']}: record {found['record_id']} (seq {found['seq']}): "
                                  f"{found['message']}")
            if kept.break_count:
                raise CommandError("the audit trail's chain is broken", returncode=1)
            return
        result = chain.verify(unsealed_after=timedelta(minutes=options["unsealed_after_minutes"]))
        self.stdout.write(f"{result.checked} records checked, {len(result.breaks)} breaks")
        for found in result.breaks:
            self.stdout.write(str(found))
        if result.breaks:
            raise CommandError("the audit trail's chain is broken", returncode=1)
