from django.apps import AppConfig


class AuditConfig(AppConfig):
    """The audit trail (IHE ATNA, DICOM PS3.15 A.5): imports only Django, the standard library and
    ``project``; it records for every app as the recorder of ``project.auditing.recording``."""

    name = "audit"
    verbose_name = "Audit trail"

    def ready(self):
        from audit import trail
        from project.auditing import recording

        recording.register(trail)
