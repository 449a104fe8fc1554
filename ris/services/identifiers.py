"""Identifiers the filler (we) assigns: accession numbers and Study Instance UIDs.

Accession numbers come from the database: PostgreSQL's sequence
``ris_accession_number_seq`` (created by migration 0002), or on SQLite an
autoincrement row -- never max()+1, which two concurrent orders would share.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import connection

from ris.models import AccessionNumberAllocation

# The PostgreSQL sequence accession numbers come from (migration ris 0002).
ACCESSION_SEQUENCE = "ris_accession_number_seq"


def next_accession_sequence_value() -> int:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT nextval('{ACCESSION_SEQUENCE}')")
            return int(cursor.fetchone()[0])
    return AccessionNumberAllocation.objects.create().pk


def new_accession_number() -> str:
    """A new, unique AccessionNumber in ACCESSION_NUMBER_FORMAT (at most 16 characters, SH)."""
    return accession_number_for(next_accession_sequence_value())


def accession_number_for(n: int) -> str:
    """The AccessionNumber for sequence value ``n`` (callers that took the value in their own query)."""
    return settings.ACCESSION_NUMBER_FORMAT.format(n=n)


def new_study_instance_uid() -> str:
    """A UID under the 2.25 root from a random UUID (PS3.5 B.2): '2.25.' + the UUID as an integer."""
    return f"2.25.{uuid.uuid4().int}"
