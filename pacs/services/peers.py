"""Declared DICOM peers: environment declarations into ``DicomNode`` rows, and the count of
associations refused (``DicomRefusal``).

There is one place the association policy looks a calling AE up: the ``DicomNode`` table.
``DICOM_NODES`` (deployment as code) is written into it, so the admin shows every declared
node and the policy needs no second source: ``sync_environment_nodes`` upserts each declared
AE title (the environment wins for the AE titles it names, also over a row made in the
admin) and disables the rows it declared before and no longer does.  The DICOM listener runs
it when it starts; the upsert is one INSERT ... ON CONFLICT, so listener processes starting
together do not collide.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from pacs.models import DicomNode, DicomRefusal
from project.peers import GRANTS, Peer

log = logging.getLogger("pacs.peers")


def sync_environment_nodes(declared: list[Peer] | None = None) -> int:
    """Write the DICOM_NODES declarations into DicomNode rows; returns how many are declared."""
    declared = settings.DICOM_NODES_DECLARED if declared is None else declared
    rows = [DicomNode(ae_title=p.ae_title, host=p.host, certificate_name=p.certificate_name, port=p.port,
                      enabled=True, from_environment=True, **p.flags())
            for p in declared]
    with transaction.atomic():
        if rows:
            DicomNode.objects.bulk_create(
                rows, update_conflicts=True, unique_fields=["ae_title"],
                update_fields=["host", "certificate_name", "port", "enabled", "from_environment", *GRANTS.values()])
        (DicomNode.objects.filter(from_environment=True, enabled=True)
         .exclude(ae_title__in=[p.ae_title for p in declared]).update(enabled=False))
    if declared:
        log.info("dicom nodes declared by the environment", extra={"nodes": len(declared)})
    return len(declared)


def record_refusal(address: str, reason: str, calling_ae_title: str) -> None:
    """Count one refused association (PS3.8 A-ASSOCIATE-RJ) for its source address and hour."""
    now = timezone.now()
    table = DicomRefusal._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (hour, address, reason, calling_ae_title, count, last_at) "
            "VALUES (%s, %s, %s, %s, 1, %s) ON CONFLICT (hour, address, reason) "
            f"DO UPDATE SET count = {table}.count + 1, last_at = excluded.last_at, "
            "calling_ae_title = excluded.calling_ae_title",
            [now.replace(minute=0, second=0, microsecond=0), address[:45], reason[:32], calling_ae_title[:16], now],
        )
