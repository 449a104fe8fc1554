"""DICOMweb STOW-RS sender (PS3.18 10.5): the stored files POSTed as multipart/related.

Used by ``pacs.services.routing`` for destinations of kind ``stow``.  Instances go in
requests of at most ``BATCH_BYTES`` (bounded memory); the response's FailedSOPSequence
(0008,1198) names refused instances with their FailureReason.  HTTP 5xx, 408, 429 and
connection errors are transient; other 4xx are permanent.  STOW-RS has no storage
commitment: an instance in ReferencedSOPSequence (0008,1199) counts as committed.

Over https (TLS 1.2 or 1.3, the BCP 195 profile that PS3.15 B.9 names for DICOM) the server's certificate is
verified against TLS_CA_CERTIFICATES when set (the system's store otherwise) and its host name
checked; the engine's certificate (TLS_CERTIFICATE, TLS_PRIVATE_KEY) is presented when the
server asks for a client certificate.  A server certificate that does not verify is permanent
(no retry mends it until a certificate or the trusted CAs change); there is no fallback to
http or to an unverified connection.
"""

from __future__ import annotations

import ssl
import uuid

import requests
from django.conf import settings
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO

from pacs.services.routing.sending import ItemOutcome, ItemToSend, PermanentError, TransientError
from project.encryption import Unreadable

BATCH_BYTES = 32 * 1024 * 1024
TIMEOUT = (10, 300)
TRANSIENT_HTTP = {408, 429, 500, 502, 503, 504}


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


def tls_arguments() -> dict:
    """``requests``' verify and cert: the trusted CAs and the engine's client certificate."""
    own = (settings.TLS_CERTIFICATE, settings.TLS_PRIVATE_KEY) if settings.TLS_CERTIFICATE and settings.TLS_PRIVATE_KEY \
        else None
    return {"verify": settings.TLS_CA_CERTIFICATES or True, "cert": own}


def _refused_certificate(exc: requests.RequestException) -> str:
    """The verification error when the server's certificate was refused, else ''."""
    cause = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {cause.verify_message}"
        inner = [getattr(cause, "reason", None), *cause.args[:1], cause.__cause__, cause.__context__]
        cause = next((c for c in inner if isinstance(c, BaseException) and c is not cause), None)
    return ""


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
    if isinstance(destination.username, Unreadable) or isinstance(destination.password, Unreadable):
        raise PermanentError("the stored STOW-RS credentials cannot be opened with SECRETS_ENCRYPTION_KEYS")
    auth = (destination.username, destination.password) if destination.username else None
    try:
        response = requests.post(f"{destination.url.rstrip('/')}/studies", data=bytes(body), headers=headers,
                                 auth=auth, timeout=TIMEOUT, **tls_arguments())
    except requests.exceptions.SSLError as exc:
        if refused := _refused_certificate(exc):
            raise PermanentError(f"STOW-RS to {destination.url}: the server's certificate was refused: {refused}") \
                from exc
        raise TransientError(f"STOW-RS to {destination.url}: TLS handshake failed") from exc
    except requests.RequestException as exc:
        raise TransientError(f"STOW-RS to {destination.url}: {type(exc).__name__}") from exc
    except OSError as exc:  # requests' own check of the files named in verify and cert
        raise PermanentError(f"STOW-RS to {destination.url}: cannot load the TLS files: {exc}") from exc
    if response.status_code in TRANSIENT_HTTP:
        raise TransientError(f"STOW-RS HTTP {response.status_code}")
    if response.status_code >= 400 and response.status_code != 409:
        raise PermanentError(f"STOW-RS HTTP {response.status_code}: {response.text[:200]}")
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
