"""What both writers share: the conflict they report and the lock on a first registration."""

from __future__ import annotations

from django.db import IntegrityError, connection

from ris.commands import PatientIdentity


class Conflict(IntegrityError):
    """Another connection registered the plan's new patient between the read and the write.

    Raised before the writer wrote anything of the plan: the caller reads again and plans anew
    (the HL7 intake runs the whole message again on an ``IntegrityError``)."""


def lock_identity(identity: PatientIdentity) -> None:
    """Serialise concurrent first registrations of one identifier (PostgreSQL advisory lock,
    released at commit): two orders for a new patient on two connections create one patient."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))",
                           [f"patient:{identity.assigning_authority}:{identity.id_number}"])
