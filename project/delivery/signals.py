"""The hand-off between the two outbound queues: VNA routing (``pacs.services.routing``) decides
which archives hold a patient's studies, the HL7 outbox (``hl7gateway.outbox``) sends the ADT
messages to those that take HL7.  Neither app imports the other (docs/architecture.md), so the
routing side announces here and the outbox listens.

- ``archive_patient_changed`` (kwargs ``patient_id``, ``event``, ``merge_id``, ``archives``):
  sent inside the transaction of an A08 (``event`` "A08") or A40 (``event`` "A40", ``merge_id``
  the ``ris.PatientMerge`` row) when studies of the patient are already in VNAs that take HL7 ADT;
  ``archives`` is a tuple of ``AdtArchive``, one per such VNA.  The receiver queues one ADT
  message per archive in the same transaction (IHE RAD-12 Patient Update, forwarded).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.dispatch import Signal

archive_patient_changed = Signal()


@dataclass(frozen=True)
class AdtArchive:
    """A VNA's HL7 ADT receiver: ``key`` names the VNA destination row stably (its primary key)."""

    key: int
    name: str
    host: str
    port: int
    tls: bool = False
