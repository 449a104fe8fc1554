"""Install the built-in image viewer (OHIF, the pinned ``@ohif/app`` from the npm registry) into
VIEWER_DIR (``worklist.ohif``); nothing to do when that version is already there.  Run by
``make run`` and ``make test``; needs Node.js's ``npm`` the first time only."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from worklist import ohif


class Command(BaseCommand):
    help = "Install the built-in OHIF viewer (pinned version, integrity checked) into VIEWER_DIR."

    def add_arguments(self, parser):
        parser.add_argument("--if-npm", action="store_true",
                            help="without npm on PATH, say so and succeed (the viewer is then not offered)")

    def handle(self, **options):
        if ohif.is_installed(settings.VIEWER_DIR):
            if options["verbosity"] > 1:
                self.stdout.write(f"{ohif.PACKAGE}@{ohif.VERSION} already installed")
            return
        try:
            ohif.install(settings.VIEWER_DIR, log=self.stdout.write)
        except ohif.InstallError as exc:
            if options["if_npm"] and "not on PATH" in str(exc):
                self.stderr.write(f"built-in viewer not installed: {exc}")
                return
            raise CommandError(str(exc)) from exc
