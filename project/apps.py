import logging

from django.apps import AppConfig


class ProjectConfig(AppConfig):
    name = "project"
    verbose_name = "Engine"

    def ready(self):
        from project import checks  # noqa: F401 - registers the system checks

        # Python warnings (pydicom's "Invalid value for VR ..." quotes the value) go through logging,
        # where project.logs.PatientDataFilter scrubs them, instead of straight to stderr.
        logging.captureWarnings(True)
