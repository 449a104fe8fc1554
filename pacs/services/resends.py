"""A C-STORE of a SOP Instance UID already stored: what decides it and what is recorded.

A SOP Instance UID names one content (PS3.3 C.12.1.1.1, PS3.5 9): a resend whose data set is
byte-identical to the stored one (same SHA-256 of the data set, the File Meta Information
left out) is the same instance, stored already, and answered Success with nothing changed.
The digests are computed when a resend arrives, from the two files (the received one still in
the incoming directory), not while every data set is received: resends are rare, and C-STORE
ingest pays nothing for them.  The stored version's digest is kept on its row once computed.  A resend with other
content is handled by ``STORE_OVERWRITE_POLICY`` (``pacs.models.images.OVERWRITE_POLICIES``):

- ``keep``: the stored version stays, the resend is dropped, the conflict is recorded;
- ``replace``: file and index are replaced together, the old file is kept under
  ``STORAGE_DIR/.replaced`` until the study is archived, the replacement recorded, and a
  study already sent to the VNA is re-opened so that the next completion sends the new
  version (as a late instance is);
- ``reject``: nothing changes, the conflict is recorded, the sender gets a failure status.

The statuses are the DIMSE adapter's (``pacs.dimse.store``).  The index writer that applies
a decision is ``pacs.services.images``; this module decides, compares and records.
Attribute values go into the ``StoreConflict`` row (shown to operators), never into a log line.
"""

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from pydicom import dcmread

from pacs import storage
from pacs.models import StoreConflict
from pacs.models import images as im

log = logging.getLogger("pacs.resends")

IDENTICAL = "identical"
_SHOWN = 64  # characters of a value kept in a difference


class ResendRejected(Exception):
    """A resend with other content, refused (STORE_OVERWRITE_POLICY=reject)."""


def policy() -> str:
    value = settings.STORE_OVERWRITE_POLICY
    return value if value in im.OVERWRITE_POLICIES else im.OVERWRITE_KEEP


def decide(stored_sha256: str, received_sha256: str) -> str:
    """IDENTICAL when both data sets have the same digest, else the configured policy."""
    if stored_sha256 and stored_sha256 == received_sha256:
        return IDENTICAL
    return policy()


def stored_sha256(instance_id: int, instance_sha256: str, stored_path: Path) -> str:
    """The stored version's digest: from its row, or from its file (then kept on the row)."""
    if instance_sha256:
        return instance_sha256
    try:
        digest = storage.data_set_sha256(stored_path)
    except (OSError, ValueError):
        return ""  # no file to compare with: not identical, the policy decides
    im.Instance.objects.filter(pk=instance_id, dataset_sha256="").update(dataset_sha256=digest)
    return digest


def received_sha256(received: Path) -> str:
    """The resend's digest, from the file it was received into."""
    try:
        return storage.data_set_sha256(received)
    except (OSError, ValueError):
        return ""


def _header(path: Path):
    """(header without Pixel Data, offset of (7FE0,0010) or None)."""
    with open(path, "rb") as fh:
        ds = dcmread(fh, stop_before_pixels=True, force=True)
        offset = fh.tell()  # pydicom stops at the Pixel Data tag, before its header
        end = fh.seek(0, 2)
    return ds, (offset if offset < end else None)


def _shown(element) -> str:
    if element is None:
        return ""
    value = element.value
    if element.VR == "SQ":
        return f"(sequence of {len(value)} items)"
    if isinstance(value, (bytes, bytearray)):
        return f"({len(value)} bytes)"
    return str(value)[:_SHOWN]


def differences(stored_path: Path, received_path: Path) -> list[dict]:
    """What differs between two versions of an instance: every top-level attribute whose value
    differs (or is present in one only), the Transfer Syntax, and Pixel Data as the SHA-256 of
    each version's bytes from (7FE0,0010) to the end.  [{"keyword", "stored", "received"}]."""
    try:
        stored, stored_pixels = _header(stored_path)
    except OSError:
        return [{"keyword": "(stored version not on disk: not compared)", "stored": "", "received": ""}]
    received, received_pixels = _header(received_path)
    found = []
    stored_ts = str(stored.file_meta.get("TransferSyntaxUID", ""))
    received_ts = str(received.file_meta.get("TransferSyntaxUID", ""))
    if stored_ts != received_ts:
        found.append({"keyword": "TransferSyntaxUID", "stored": stored_ts, "received": received_ts})
    for tag in sorted(set(stored.keys()) | set(received.keys())):
        a, b = stored.get(tag), received.get(tag)
        if a is not None and b is not None and a.value == b.value:
            continue
        keyword = (a or b).keyword or str(tag)
        found.append({"keyword": keyword, "stored": _shown(a), "received": _shown(b)})
    a = storage.sha256_from(stored_path, stored_pixels) if stored_pixels is not None else ""
    b = storage.sha256_from(received_path, received_pixels) if received_pixels is not None else ""
    if a != b:
        found.append({"keyword": "PixelData", "stored": f"SHA-256 {a[:16]}" if a else "",
                      "received": f"SHA-256 {b[:16]}" if b else ""})
    if not found:
        found.append({"keyword": "(encoding only)", "stored": "", "received": ""})
    return found


def record(*, study_id: int, instance_id: int, sop_instance_uid: str, action: str, found: list[dict],
           stored_sha256: str, received_sha256: str, calling_ae_title: str, replaced_path: str = "") -> StoreConflict:
    """The conflict row (inside the caller's transaction when it has one), and a log line that
    names the differing keywords only."""
    row = StoreConflict.objects.create(
        study_id=study_id, instance_id=instance_id, sop_instance_uid=sop_instance_uid, policy=action,
        differences=found, stored_sha256=stored_sha256, received_sha256=received_sha256,
        calling_ae_title=calling_ae_title[:16], replaced_path=replaced_path,
    )
    log.warning("C-STORE resend with other content", extra={
        "calling_ae_title": calling_ae_title, "policy": action, "instance_id": instance_id,
        "differences": ",".join(d["keyword"] for d in found)[:300],
    })
    return row


def release_replaced(study_id: int) -> int:
    """Delete the replaced versions kept for a study (called once it is archived: the VNA has
    committed the replacement, PS3.4 J.3).  Returns how many files were deleted."""
    rows = list(StoreConflict.objects.filter(
        of_study(study_id), replaced_removed_at__isnull=True).exclude(replaced_path=""))
    for row in rows:
        storage.discard(storage.storage_root() / row.replaced_path)
    StoreConflict.objects.filter(pk__in=[r.pk for r in rows]).update(replaced_removed_at=timezone.now())
    return len(rows)


def of_study(study_id: int) -> Q:
    """Conflicts shown on a study: of an instance it held, or of an instance it holds now."""
    return Q(study_id=study_id) | Q(instance__study_id=study_id)


def release_replaced_on_commit(study_id: int) -> None:
    """``release_replaced`` once the caller's transaction (the one archiving the study) commits."""
    transaction.on_commit(lambda: release_replaced(study_id))
