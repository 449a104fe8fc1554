"""``manage.py record_application_activity PROCESS start|stop``: an Application Activity record
(PS3.15 A.5.3.1) for a process that does not run Django itself (gunicorn's master)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from audit.processes import PROCESSES, application_activity


class Command(BaseCommand):
    help = "Record a process's start or stop on the audit trail (Application Activity)."

    def add_arguments(self, parser):
        parser.add_argument("process", choices=PROCESSES)
        parser.add_argument("event", choices=["start", "stop"])
        parser.add_argument("--pid", type=int, default=None, help="the process's id (default: this command's)")

    def handle(self, *args, process, event, pid=None, **options):
        if not application_activity(process, started=event == "start", pid=pid):
            raise CommandError("not recorded: the database is unavailable")
        self.stdout.write(f"application {event} of {process} recorded")
