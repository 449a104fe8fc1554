"""System checks of the monitoring settings."""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.security)
def check_metrics_allowed_ips(app_configs, **kwargs):
    """monitoring.E001: an entry of METRICS_ALLOWED_IPS is neither an address nor a network
    (it is ignored: /monitoring/metrics stays closed to it)."""
    errors = []
    for entry in settings.METRICS_ALLOWED_IPS:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            errors.append(Error(f"METRICS_ALLOWED_IPS: {entry!r} is neither an IP address nor a CIDR network.",
                                hint="e.g. 127.0.0.1,::1,10.20.0.0/16 (see .env.example)", id="monitoring.E001"))
    return errors
