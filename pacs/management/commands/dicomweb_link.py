"""``manage.py dicomweb_link <StudyInstanceUID>``: a signed, study-bound DICOMweb link (the
WADO-RS study resource, PS3.18 10.4.1, with ``access_token``), good for
DICOMWEB_LINK_MAX_AGE_MINUTES, for an EHR or a viewer that cannot sign in."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from pacs import storage
from pacs.models import Study
from project import links


class Command(BaseCommand):
    help = "Print a signed DICOMweb link that grants one study for DICOMWEB_LINK_MAX_AGE_MINUTES."

    def add_arguments(self, parser):
        parser.add_argument("study_instance_uid")
        parser.add_argument("--base", default="", help="DICOMweb base URL (default WADO_RS_BASE_URL)")

    def handle(self, study_instance_uid, base, **options):
        if not storage.is_valid_uid(study_instance_uid):
            raise CommandError("not a UID")
        if not Study.objects.filter(study_instance_uid=study_instance_uid).exists():
            raise CommandError("no such study here")
        base = base or settings.WADO_RS_BASE_URL
        problem = links.base_url_problem(base) if base else "is not set (WADO_RS_BASE_URL or --base)"
        if problem:
            raise CommandError(f"the DICOMweb base URL {problem}")
        self.stdout.write(links.signed_study_link(base, study_instance_uid))
        self.stderr.write(f"good for {settings.DICOMWEB_LINK_MAX_AGE_MINUTES} minutes")
