"""The per-address, per-hour count of refused inbound messages (``InboundRefusal``).

One statement per refusal (``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``, PostgreSQL and
SQLite alike): concurrent connections from one address count without losing increments, and
the count returned tells the intake whether this message is still kept whole in the inbound
log (at most ``HL7_REFUSED_LOG_LIMIT`` an hour from one address) or only counted.
"""

from __future__ import annotations

from django.db import connection
from django.utils import timezone

from hl7gateway.models import InboundRefusal
from hl7gateway.parsing import MSH

_TABLE = InboundRefusal._meta.db_table
_UPSERT = (
    f"INSERT INTO {_TABLE} (hour, source_address, refused_count, first_at, last_at, last_sending_application, "
    "last_sending_facility, last_message_type, last_reason) VALUES (%s, %s, 1, %s, %s, %s, %s, %s, %s) "
    f"ON CONFLICT (hour, source_address) DO UPDATE SET refused_count = {_TABLE}.refused_count + 1, "
    "last_at = excluded.last_at, last_sending_application = excluded.last_sending_application, "
    "last_sending_facility = excluded.last_sending_facility, last_message_type = excluded.last_message_type, "
    "last_reason = excluded.last_reason RETURNING refused_count"
)


def count(address: str, msh: MSH | None, reason: str) -> int:
    """Count one refused message from ``address``; the number refused from it this hour."""
    now = timezone.now()
    hour = now.replace(minute=0, second=0, microsecond=0)
    m = msh or MSH()
    with connection.cursor() as cursor:
        cursor.execute(_UPSERT, [hour, address[:64], now, now, m.msh_3[:180], m.msh_4[:180],
                                 m.message_type[:20], reason[:255]])
        return cursor.fetchone()[0]
