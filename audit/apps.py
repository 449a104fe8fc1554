from django.apps import AppConfig


class AuditConfig(AppConfig):
    """The audit trail (IHE ATNA, DICOM PS3.15 A.5): imports only Django and the standard library,
    so that every other app may record into it."""

    name = "audit"
    verbose_name = "Audit trail"
