from django.apps import AppConfig


class AuditExportConfig(AppConfig):
    """The export of the audit trail to an Audit Record Repository (IHE ATNA): its beat task and
    its management command.  No models: the cursor is ``audit.models.AuditExport``."""

    name = "audit_export"
    verbose_name = "Audit Record Repository export"
