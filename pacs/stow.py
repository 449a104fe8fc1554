"""DICOMweb STOW-RS sender (PS3.18 10.5): the stored files POSTed as multipart/related.

Used by ``pacs.services.routing`` for destinations of kind ``stow``.  Instances go in
requests of at most ``BATCH_BYTES`` (bounded memory); the response's FailedSOPSequence
(0008,1198) names refused instances with their FailureReason.  HTTP 5xx, 408, 429 and
connection errors are transient; other 4xx are permanent.  STOW-RS has no storage
commitment: an instance in ReferencedSOPSequence (0008,1199) counts as committed.

The base URL, credentials, TLS (https: the server's certificate verified, the engine's presented
when asked), timeouts and the classification of failures are those of ``pacs.dicomweb_http``,
which the QIDO-RS / WADO-RS client of the same destinations (``pacs.qr_dicomweb``) shares.
"""

from __future__ import annotations

import uuid

from pydicom import dcmread
from pydicom.filebase import DicomBytesIO

from pacs import dicomweb_http
from pacs.services.routing.sending import ItemOutcome, ItemToSend, PermanentError

BATCH_BYTES = 32 * 1024 * 1024


def _payload(item: ItemToSend, corrections: dict[str, str]) -> bytes:
    if not corrections:
        with open(item.path, "rb") as fh:
            return fh.read()
    ds = dcmread(item.path)
    for keyword, value in corrections.items():
        setattr(ds, keyword, value)
    out = DicomBytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _post(destination, parts: list[bytes]) -> dict:
    boundary = uuid.uuid4().hex
    body = bytearray()
    for part in parts:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += part
        body += b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    response = dicomweb_http.send(destination, "POST", f"{dicomweb_http.base_url(destination)}/studies",
                                  service="STOW-RS", data=bytes(body), headers=headers)
    dicomweb_http.check_status(response, "STOW-RS", allowed=(409,))  # 409: some instances refused (FailedSOPSequence)
    try:
        return response.json() or {}
    except ValueError:
        return {}


def _uids(sequence_json: dict, key: str) -> dict[str, str]:
    out = {}
    for item in (sequence_json.get(key) or {}).get("Value", []) or []:
        uid = (item.get("00081155") or {}).get("Value", [""])[0]
        reason = (item.get("00081197") or {}).get("Value", [""])[0]
        out[uid] = f"FailureReason 0x{int(reason):04X}" if reason not in ("", None) else ""
    return out


def send_items(destination, items: list[ItemToSend], *, corrections: dict[str, str], progress) -> list[ItemOutcome]:
    outcomes: list[ItemOutcome] = []
    batch: list[tuple[ItemToSend, bytes]] = []
    size = 0

    def flush():
        nonlocal batch, size
        if not batch:
            return
        result = _post(destination, [data for _, data in batch])
        stored = _uids(result, "00081199")
        failed = _uids(result, "00081198")
        chunk = []
        for item, _ in batch:
            if item.sop_instance_uid in failed:
                outcome = ItemOutcome(item.item_id, False, reason=f"STOW-RS refused: {failed[item.sop_instance_uid]}")
            elif item.sop_instance_uid in stored or not result:
                outcome = ItemOutcome(item.item_id, True)
            else:
                outcome = ItemOutcome(item.item_id, False, transient=True, reason="not in the STOW-RS response")
            chunk.append(outcome)
        outcomes.extend(chunk)
        progress(chunk)
        batch, size = [], 0

    for item in items:
        data = _payload(item, corrections)
        batch.append((item, data))
        size += len(data)
        if size >= BATCH_BYTES:
            flush()
    flush()
    return outcomes


def request_commitment(destination, transaction_uid, refs):  # pragma: no cover - STOW has no commitment
    raise PermanentError("STOW-RS destinations have no storage commitment")
