from django.apps import AppConfig


class PacsConfig(AppConfig):
    name = "pacs"
    verbose_name = "Imaging (PACS side)"

    def ready(self):
        from pacs import receivers  # noqa: F401 - patient changes forwarded to the archive
        from pacs.services import completion  # noqa: F401 - study completion listens to mpps_completed
