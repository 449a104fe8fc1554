from django.apps import AppConfig


class Hl7GatewayConfig(AppConfig):
    name = "hl7gateway"
    verbose_name = "HL7 interfaces"

    def ready(self) -> None:
        # Django: receivers and checks connect once the app registry is ready.
        from hl7gateway import (
            checks,  # noqa: F401 - registers the system checks
            receivers,  # noqa: F401 - connects the ris.signals receivers
        )
