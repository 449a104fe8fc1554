from django.apps import AppConfig


class PacsConfig(AppConfig):
    name = "pacs"
    verbose_name = "Imaging (PACS side)"

    def ready(self):
        from pacs import checks  # noqa: F401 - registers the system checks
