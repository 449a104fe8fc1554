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


def next_accession_sequence_value() -> int:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT nextval('ris_accession_number_seq')")
            return int(cursor.fetchone()[0])
    return AccessionNumberAllocation.objects.create().pk


def new_accession_number() -> str:
    """A new, unique AccessionNumber in ACCESSION_NUMBER_FORMAT (at most 16 characters, SH)."""
    return settings.ACCESSION_NUMBER_FORMAT.format(n=next_accession_sequence_value())


def new_study_instance_uid() -> str:
    """A UID under the 2.25 root from a random UUID (PS3.5 B.2): '2.25.' + the UUID as an integer."""
    return f"2.25.{uuid.uuid4().int}"
