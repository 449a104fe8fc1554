"""The VNAs a study goes to: rows of ``VnaDestination``, from the admin and from
``VNA_DESTINATIONS`` (its forms: ``project.delivery.destinations.parse_vna``)."""

from __future__ import annotations

import logging

from django.conf import settings

from pacs.models import VnaDestination
from project.delivery.declared import sync_declared
from project.delivery.destinations import parse_vna

log = logging.getLogger("pacs.routing")


def sync_environment_destinations() -> list[VnaDestination]:
    """Create or update the destinations declared in ``VNA_DESTINATIONS`` (enabled); disable the
    ones no longer declared.  A value that cannot be parsed changes nothing (``pacs.E001``)."""
    try:
        declared = parse_vna(settings.VNA_DESTINATIONS)
    except ValueError:
        log.error("VNA_DESTINATIONS cannot be parsed", exc_info=True)
        return []
    fields = {d["name"]: {**{k: v for k, v in d.items() if k != "name"}, "enabled": True} for d in declared}
    return sync_declared(VnaDestination, fields, flag="from_environment", retire={"enabled": False})


_synced = False


def destinations() -> list[VnaDestination]:
    """The enabled destinations (the environment's read into the table once per process)."""
    global _synced
    if not _synced:
        sync_environment_destinations()
        _synced = True
    return list(VnaDestination.objects.filter(enabled=True))
