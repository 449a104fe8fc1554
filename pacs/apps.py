import logging

from django.apps import AppConfig


class PacsConfig(AppConfig):
    name = "pacs"
    verbose_name = "Imaging (PACS side)"

    def ready(self):
        # checks: the system checks; directory, sessions, signin: sign-in and session receivers.
        from pacs import auth_audit, checks, directory, sessions, signin  # noqa: F401
        from pacs.services import completion  # noqa: F401 - study completion listens to mpps_completed

        # Python warnings (pydicom's "Invalid value for VR ..." quotes the value) go through logging,
        # where pacs.logs.PatientDataFilter scrubs them, instead of straight to stderr.
        logging.captureWarnings(True)
        # Sign-in, sign-out, lockouts and account changes on the audit trail.
        auth_audit.connect()
