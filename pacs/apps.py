from django.apps import AppConfig


class PacsConfig(AppConfig):
    name = "pacs"
    verbose_name = "Imaging (PACS side)"

    def ready(self):
        from pacs.services import completion  # noqa: F401 - study completion listens to mpps_completed
