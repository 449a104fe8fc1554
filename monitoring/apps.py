from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "monitoring"
    verbose_name = "Monitoring and alarms"

    def ready(self):
        # Django: checks and receivers connect once the app registry is ready.
        from monitoring import (
            checks,  # noqa: F401 - registers the system checks
            receivers,  # noqa: F401 - connects the pacs.signals receivers
        )
