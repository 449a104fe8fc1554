"""Close reading claims idle for longer than READING_CLAIM_TIMEOUT_MINUTES (also done on each claim)."""

from django.core.management.base import BaseCommand

from worklist.services import expire_idle_claims


class Command(BaseCommand):
    help = "Expire idle reading claims."

    def handle(self, **options):
        self.stdout.write(f"expired {expire_idle_claims()} claim(s)")
