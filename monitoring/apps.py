from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "monitoring"
    verbose_name = "Monitoring and alarms"

    def ready(self):
        from monitoring import checks  # noqa: F401 - registers the system checks
