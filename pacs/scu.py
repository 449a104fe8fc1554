"""The engine as an SCU towards a VNA: C-STORE (PS3.4 B) and Storage Commitment Push Model
N-ACTION (PS3.4 J.3.2).  Used by ``pacs.services.routing`` inside a Celery task.

One association per transfer, proposing exactly the (SOP class, transfer syntax) pairs the
stored files have, so files are sent as stored, streamed from disk without decoding.
Instances whose attributes are corrected from the order are read, corrected and re-encoded
in their own transfer syntax.  Every association belongs to one call, never shared between
threads (pynetdicom's associations are not thread-safe).

C-STORE is sent by the engine's own requestor (``pacs.dimse.requestor``, the default
``VNA_DICOM_SENDER=engine``) or by dcmtk's storescu (``dcmtk``, ``pacs.scu_dcmtk``); the
storage commitment request (one small N-ACTION per transfer) always by the engine's requestor.

A destination with ``tls`` (``dicoms://``) is reached over TLS only (PS3.15 B.9, BCP 195), by
every one of these senders: the VNA's certificate is verified against TLS_CA_CERTIFICATES (or
the system's store) and its host name checked (``project.tls.client_context``); the engine's
certificate is offered when the VNA asks for one.  A certificate that does not verify fails
the transfer at once (``PermanentError``: no retry mends it until someone changes a
certificate or the trusted CAs, then "retry" on the transfers page); a handshake broken
otherwise (reset, timed out) is transient.  There is no fallback to clear text.
"""

from __future__ import annotations

import logging
import socket

from django.conf import settings
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import encode as encode_dataset
from pynetdicom.sop_class import StorageCommitmentPushModel

from pacs.dimse import requestor
from pacs.services.routing.sending import ItemOutcome, ItemToSend, PermanentError, TransientError
from project import tls

log = logging.getLogger("pacs.scu")

MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1-255
PROGRESS_EVERY = 10
WARNINGS = {0xB000, 0xB006, 0xB007}
# Storage Commitment Push Model SOP Instance (PS3.4 J.3.5).
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"


def where(destination) -> str:
    """The destination as the transfers page names it in a reason."""
    scheme = "dicoms" if destination.tls else "dicom"
    return f"{scheme}://{destination.ae_title}@{destination.host}:{destination.port}"


def tls_context(destination):
    """The outbound TLS context for a ``dicoms://`` destination, None for ``dicom://``."""
    if not destination.tls:
        return None
    try:
        return tls.client_context()
    except tls.TLSConfigurationError as exc:
        raise PermanentError(f"TLS to {where(destination)}: {exc}") from exc


def check_peer(destination, context) -> None:
    """One TLS handshake with the VNA, its certificate chain and host name checked, closed at once;
    a refused certificate is ``PermanentError``."""
    try:
        sock = socket.create_connection((destination.host, int(destination.port)),
                                        timeout=settings.DICOM_ACSE_TIMEOUT)
    except OSError as exc:
        raise TransientError(f"no association with {where(destination)} (cannot connect: {exc})") from exc
    try:
        requestor.secure(sock, context, destination.host).close()
    except requestor.TLSFailed as exc:
        error = PermanentError if exc.certificate else TransientError
        raise error(f"no association with {where(destination)}: {exc}") from exc


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
    return send_items_engine(destination, items, corrections=corrections, progress=progress)


def _open(destination, pairs: list[tuple[str, str]]) -> requestor.Association:
    where_ = where(destination)
    try:
        return requestor.Association.request(
            destination.host, int(destination.port), calling_ae_title=settings.DICOM_AE_TITLE,
            called_ae_title=destination.ae_title, contexts=pairs, acse_timeout=settings.DICOM_ACSE_TIMEOUT,
            dimse_timeout=settings.DICOM_DIMSE_TIMEOUT, network_timeout=settings.DICOM_NETWORK_TIMEOUT,
            tls=tls_context(destination),
        )
    except requestor.AssociationRejected as exc:
        reason = f"association rejected by {where_} (result {exc.result}, source {exc.source}, reason {exc.diagnostic})"
        if exc.permanent:
            raise PermanentError(reason) from exc
        raise TransientError(reason) from exc
    except requestor.TLSFailed as exc:
        if exc.certificate:
            raise PermanentError(f"no association with {where_}: {exc}") from exc
        raise TransientError(f"no association with {where_}: {exc}") from exc
    except requestor.AssociationLost as exc:
        raise TransientError(f"no association with {where_} ({exc})") from exc


def _encoded_corrected(path: str, corrections: dict[str, str], syntax: str) -> bytes:
    ds = _corrected(path, corrections)
    return encode_dataset(ds, syntax == ImplicitVRLittleEndian, syntax != "1.2.840.10008.1.2.2",
                          syntax == "1.2.840.10008.1.2.1.99")


def send_items_engine(destination, items: list[ItemToSend], *, corrections: dict[str, str],
                      progress) -> list[ItemOutcome]:
    """Send the items over one association; report outcomes through ``progress(chunk)``."""
    pairs = sorted({(i.sop_class_uid, i.transfer_syntax_uid) for i in items})
    proposed = set(pairs[:MAX_CONTEXTS])
    outcomes: list[ItemOutcome] = []
    chunk: list[ItemOutcome] = []
    with _open(destination, pairs[:MAX_CONTEXTS]) as assoc:
        try:
            for index, item in enumerate(items):
                pair = (item.sop_class_uid, item.transfer_syntax_uid)
                context_id = assoc.accepted.get(pair)
                if context_id is None:
                    outcome = ItemOutcome(
                        item.item_id, False, transient=pair not in proposed,
                        reason=(f"SOP class {item.sop_class_uid} in {item.transfer_syntax_uid} not accepted by the VNA"
                                if pair in proposed else "more than 128 presentation contexts: sent in a later attempt"),
                    )
                else:
                    data = (_encoded_corrected(item.path, corrections, item.transfer_syntax_uid)
                            if corrections else item.path)
                    try:
                        code = assoc.send_c_store(data, sop_class_uid=item.sop_class_uid,
                                                  sop_instance_uid=item.sop_instance_uid, context_id=context_id)
                    except requestor.AssociationLost as exc:
                        reason = f"no C-STORE response ({exc})"
                        for rest in items[index:]:
                            outcome = ItemOutcome(rest.item_id, False, transient=True, reason=reason)
                            outcomes.append(outcome)
                            if rest is item:
                                chunk.append(outcome)
                        break
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
    return outcomes


def request_commitment(destination, transaction_uid: str, refs: list[tuple[str, str]]) -> None:
    """N-ACTION Request Storage Commitment (action type 1, PS3.4 J.3.2) with ReferencedSOPSequence,
    on a new association of the engine's requestor (a blocking socket: no association thread to
    start and stop between the last C-STORE and the request)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    sequence = []
    for sop_class_uid, sop_instance_uid in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class_uid
        item.ReferencedSOPInstanceUID = sop_instance_uid
        sequence.append(item)
    ds.ReferencedSOPSequence = sequence
    pairs = [(StorageCommitmentPushModel, syntax) for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)]
    with _open(destination, pairs) as assoc:
        pair = next((p for p in pairs if p in assoc.accepted), None)
        if pair is None:
            raise PermanentError(f"Storage Commitment Push Model not accepted by {destination.ae_title}")
        information = encode_dataset(ds, pair[1] == ImplicitVRLittleEndian, True)
        try:
            code = assoc.send_n_action(information, sop_class_uid=StorageCommitmentPushModel,
                                       sop_instance_uid=STORAGE_COMMITMENT_INSTANCE, action_type_id=1,
                                       context_id=assoc.accepted[pair])
        except requestor.AssociationLost as exc:
            raise TransientError(f"no N-ACTION response to the storage commitment request ({exc})") from exc
    if code != 0x0000:
        if 0xA700 <= code <= 0xA7FF or code == 0x0213:
            raise TransientError(f"storage commitment N-ACTION status 0x{code:04X}")
        raise PermanentError(f"storage commitment refused: N-ACTION status 0x{code:04X}")
