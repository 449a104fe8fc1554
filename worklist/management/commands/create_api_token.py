"""Create a token for the dictation API; prints the key once (only its SHA-256 is stored)."""

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from worklist.models import ApiToken


class Command(BaseCommand):
    help = "Create an API token for a user (radiologist or resident) of a dictation system."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="dictation", help="what uses the token, e.g. the product name")

    def handle(self, username, name, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user {username!r}")
        key = secrets.token_urlsafe(32)
        ApiToken.objects.create(user=user, name=name, key_sha256=ApiToken.digest(key))
        self.stdout.write(key)
