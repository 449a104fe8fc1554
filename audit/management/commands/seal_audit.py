"""``manage.py seal_audit``: chain every unsealed audit record now (what the beat task does)."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from audit import chain


class Command(BaseCommand):
    help = "Seal every unsealed audit record now."

    def handle(self, *args, **options):
        total = 0
        while (sealed := chain.seal()) > 0:
            total += sealed
        self.stdout.write(f"{total} records sealed")
