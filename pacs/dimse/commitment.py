"""Storage Commitment Push Model, SCU role: receiving the N-EVENT-REPORT (PS3.4 J.3.3).

The engine asks the VNA for commitment with N-ACTION (``pacs.scu``); the VNA answers later
with an N-EVENT-REPORT, usually on a new association it opens to our AE (the VNA acts as
association requestor, so we accept the SCP/SCU role selection for this SOP class).
Event Type 1: every instance committed; 2: some failed (FailedSOPSequence with
FailureReason).  The report is recorded by ``pacs.services.routing.commitment.record_commitment``
before we answer 0x0000; a database failure is answered 0x0110 (processing failure) so the
VNA may send the report again.  A report is accepted only from the destination it answers
(the AE title the request was sent to, calling from that destination's host); from any other
AE or address it is answered 0x0124 (refused: not authorized, PS3.7 Annex C) and not recorded.
The association itself needs a DICOM node with the storage commitment grant
(``pacs.dimse.policy``).
"""

from __future__ import annotations

import logging

from django.db import DatabaseError, InterfaceError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.sop_class import StorageCommitmentPushModel

from pacs.services.routing import commitment

log = logging.getLogger("pacs.dimse.commitment")

PROCESSING_FAILURE = 0x0110
NO_SUCH_EVENT_TYPE = 0x0113
INVALID_ARGUMENT = 0x0115
NOT_AUTHORIZED = 0x0124


def contexts():
    return [(StorageCommitmentPushModel, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])]


def report_from_dataset(ds) -> tuple[str, list[str], list[tuple[str, str]]]:
    transaction_uid = str(ds.get("TransactionUID", "") or "")
    committed = [str(i.ReferencedSOPInstanceUID) for i in ds.get("ReferencedSOPSequence", []) or []]
    failed = [
        (str(i.ReferencedSOPInstanceUID), f"FailureReason 0x{int(i.get('FailureReason', 0x0110)):04X}")
        for i in ds.get("FailedSOPSequence", []) or []
    ]
    return transaction_uid, committed, failed


def on_n_event_report(event):
    if event.request.EventTypeID not in (1, 2):
        return NO_SUCH_EVENT_TYPE, None
    try:
        transaction_uid, committed, failed = report_from_dataset(event.event_information)
    except Exception:  # noqa: BLE001 - unreadable report
        log.warning("unreadable storage commitment report", exc_info=True)
        return INVALID_ARGUMENT, None
    requestor = event.assoc.requestor
    try:
        status = commitment.record_commitment(transaction_uid, committed, failed,
                                              reporter=(requestor.ae_title, requestor.address))
    except commitment.NotFromDestination:
        log.warning("storage commitment report refused: not from its destination",
                    extra={"calling_ae_title": requestor.ae_title, "peer": requestor.address,
                           "transaction_uid": transaction_uid})
        return NOT_AUTHORIZED, None
    except (DatabaseError, InterfaceError):
        log.exception("storage commitment report not recorded")
        return PROCESSING_FAILURE, None
    if status is None:
        log.warning("storage commitment report for an unknown transaction", extra={"transaction_uid": transaction_uid})
    return 0x0000, None


def handlers():
    return {"N-EVENT-REPORT": on_n_event_report}
