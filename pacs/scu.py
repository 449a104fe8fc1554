"""The engine as an SCU towards a VNA: C-STORE (PS3.4 B) and Storage Commitment Push Model
N-ACTION (PS3.4 J.3.2).  Used by ``pacs.services.routing`` inside a Celery task.

One association per transfer, proposing exactly the (SOP class, transfer syntax) pairs the
stored files have, so files are sent as stored, streamed from disk without decoding
(``_config.STORE_SEND_CHUNKED_DATASET``).  Instances whose attributes are corrected from
the order are read, corrected and re-encoded in their own transfer syntax.  Every
association belongs to one call, never shared between threads (reliability D-18).
"""

from __future__ import annotations

import logging

from django.conf import settings
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import StorageCommitmentPushModel

from pacs.services.routing import ItemOutcome, ItemToSend, PermanentError, TransientError

log = logging.getLogger("pacs.scu")

_config.STORE_SEND_CHUNKED_DATASET = True

MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1-255
PROGRESS_EVERY = 10
WARNINGS = {0xB000, 0xB006, 0xB007}
# Storage Commitment Push Model SOP Instance (PS3.4 J.3.5).
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"


def _ae() -> AE:
    ae = AE(ae_title=settings.DICOM_AE_TITLE)
    ae.acse_timeout = settings.DICOM_ACSE_TIMEOUT
    ae.dimse_timeout = settings.DICOM_DIMSE_TIMEOUT
    ae.network_timeout = settings.DICOM_NETWORK_TIMEOUT
    ae.maximum_pdu_size = 0  # no limit on what we receive; we send in the peer's maximum
    return ae


def _associate(ae: AE, destination):
    assoc = ae.associate(destination.host, int(destination.port), ae_title=destination.ae_title)
    if assoc.is_established:
        return assoc
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    if assoc.is_rejected:
        primitive = assoc.acceptor.primitive
        result = getattr(primitive, "result", None)
        diag = getattr(primitive, "result_str", "") or ""
        reason = f"association rejected by {where} (result {result}, {diag})".replace(", )", ")")
        if result == 0x01:
            raise PermanentError(reason)
        raise TransientError(reason)
    raise TransientError(f"no association with {where} (connection refused, aborted or timed out)")


def classify_status(code: int) -> tuple[bool, bool]:
    """(ok, transient) for a C-STORE response status (PS3.4 B.2.3, Annex C)."""
    if code == 0x0000 or code in WARNINGS:
        return True, False
    if 0xA700 <= code <= 0xA7FF:
        return False, True
    return False, False


def _corrected(path: str, corrections: dict[str, str]) -> Dataset:
    ds = dcmread(path)
    for keyword, value in corrections.items():
        setattr(ds, keyword, value)
    return ds


def send_items(destination, items: list[ItemToSend], *, corrections: dict[str, str], progress) -> list[ItemOutcome]:
    """Send the items over one association with the sender chosen by ``VNA_DICOM_SENDER``."""
    if settings.VNA_DICOM_SENDER == "dcmtk":
        from pacs import scu_dcmtk

        return scu_dcmtk.send_items(destination, items, corrections=corrections, progress=progress)
    return send_items_pynetdicom(destination, items, corrections=corrections, progress=progress)


def send_items_pynetdicom(destination, items: list[ItemToSend], *, corrections: dict[str, str],
                          progress) -> list[ItemOutcome]:
    """Send the items over one association; report outcomes through ``progress(chunk)``."""
    pairs = sorted({(i.sop_class_uid, i.transfer_syntax_uid) for i in items})
    ae = _ae()
    for sop_class_uid, syntax in pairs[:MAX_CONTEXTS]:
        ae.add_requested_context(sop_class_uid, syntax)
    assoc = _associate(ae, destination)
    accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
    outcomes: list[ItemOutcome] = []
    chunk: list[ItemOutcome] = []
    try:
        for index, item in enumerate(items):
            pair = (item.sop_class_uid, item.transfer_syntax_uid)
            if pair not in accepted:
                proposed = pair in set(pairs[:MAX_CONTEXTS])
                outcome = ItemOutcome(
                    item.item_id, False, transient=not proposed,
                    reason=(f"SOP class {item.sop_class_uid} in {item.transfer_syntax_uid} not accepted by the VNA"
                            if proposed else "more than 128 presentation contexts: sent in a later attempt"),
                )
            else:
                data = _corrected(item.path, corrections) if corrections else item.path
                status = assoc.send_c_store(data)
                if not status or "Status" not in status:
                    outcome = ItemOutcome(item.item_id, False, transient=True,
                                          reason="no C-STORE response (association lost or timed out)")
                    outcomes.append(outcome)
                    chunk.append(outcome)
                    for rest in items[index + 1:]:
                        outcomes.append(ItemOutcome(rest.item_id, False, transient=True, reason=outcome.reason))
                    break
                code = int(status.Status)
                ok, transient = classify_status(code)
                outcome = ItemOutcome(item.item_id, ok, transient=transient,
                                      reason="" if ok else f"C-STORE status 0x{code:04X}")
            outcomes.append(outcome)
            chunk.append(outcome)
            if len(chunk) >= PROGRESS_EVERY:
                progress(chunk)
                chunk = []
    finally:
        if chunk:
            progress(chunk)
        if assoc.is_established:
            assoc.release()
    return outcomes


def request_commitment(destination, transaction_uid: str, refs: list[tuple[str, str]]) -> None:
    """N-ACTION Request Storage Commitment (action type 1) with ReferencedSOPSequence."""
    ae = _ae()
    ae.add_requested_context(StorageCommitmentPushModel, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = _associate(ae, destination)
    try:
        ds = Dataset()
        ds.TransactionUID = transaction_uid
        sequence = []
        for sop_class_uid, sop_instance_uid in refs:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class_uid
            item.ReferencedSOPInstanceUID = sop_instance_uid
            sequence.append(item)
        ds.ReferencedSOPSequence = sequence
        status, _ = assoc.send_n_action(ds, 1, StorageCommitmentPushModel, STORAGE_COMMITMENT_INSTANCE)
    finally:
        if assoc.is_established:
            assoc.release()
    if not status or "Status" not in status:
        raise TransientError("no N-ACTION response to the storage commitment request")
    code = int(status.Status)
    if code != 0x0000:
        if 0xA700 <= code <= 0xA7FF or code == 0x0213:
            raise TransientError(f"storage commitment N-ACTION status 0x{code:04X}")
        raise PermanentError(f"storage commitment refused: N-ACTION status 0x{code:04X}")
