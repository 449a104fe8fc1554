"""``manage.py unlock_account <username> ...``: end the sign-in lockout of user names (and clear
their failed attempts), as an administrator does in the admin's "Access attempts" list.
``--address`` unlocks client addresses instead."""

from __future__ import annotations

from axes.utils import reset
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Unlock sign-in for user names (or, with --address, client addresses) locked after failed attempts."

    def add_arguments(self, parser):
        parser.add_argument("names", nargs="+", help="user names (client addresses with --address)")
        parser.add_argument("--address", action="store_true", help="the names are client IP addresses")

    def handle(self, *args, names, address, **options):
        removed = sum(reset(ip=name) if address else reset(username=name) for name in names)
        self.stdout.write(f"unlocked {', '.join(names)}: {removed} failed-attempt record(s) removed")
