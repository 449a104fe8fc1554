from django.apps import AppConfig


class WorklistConfig(AppConfig):
    name = "worklist"
    verbose_name = "Reading worklist"

    def ready(self):
        from worklist import receivers  # noqa: F401 - connects the ris.signals receivers
