import logging

from django.apps import AppConfig


class PacsConfig(AppConfig):
    name = "pacs"
    verbose_name = "Imaging (PACS side)"

    def ready(self):
        from pacs import checks  # noqa: F401 - registers the system checks
        from pacs.services import completion  # noqa: F401 - study completion listens to mpps_completed

        # Python warnings (pydicom's "Invalid value for VR ..." quotes the value) go through logging,
        # where pacs.logs.PatientDataFilter scrubs them, instead of straight to stderr.
        logging.captureWarnings(True)
