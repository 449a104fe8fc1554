from django.apps import AppConfig


class Hl7GatewayConfig(AppConfig):
    name = "hl7gateway"
    verbose_name = "HL7 interfaces"
