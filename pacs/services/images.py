"""Receiving an instance: file committed to the store, then the index, then Success.

``store_instance`` takes plain values (``InstanceAttributes``, read from the header by the
DIMSE adapter ``pacs.dimse.store``) and a fsynced temporary file in the store.  Order of
work (conventions: persist before you acknowledge, PS3.4 B.2.3: Success means stored):

1. UIDs validated, path derived from them only (``pacs.storage``);
2. the temporary file renamed into place (atomic) unless an indexed file is there;
3. in one durable transaction: what the database holds read (``pacs.services.index_db``),
   the plan decided (``pacs.services.index_plan``), its rows written, a new study matched to
   its order (``pacs.services.order_matching``), a study no longer receiving re-opened;
4. only then the caller answers Success.  If the transaction fails, a file that did not
   exist before is removed again and the caller answers a failure status.

An instance whose SOP Instance UID has an index row is never written over by the index: the
plan says ``AlreadyStored`` and ``_store_resend`` applies what ``pacs.services.resends``
decides (identical: nothing changes; else STORE_OVERWRITE_POLICY), the same on every database.
The one exception is an instance of a study purged after archiving whose file is gone: what
arrives (fetched back from the VNA) becomes its file (``_restore_purged``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from pacs import storage
from pacs.models import Instance, Study
from pacs.models import images as im
from pacs.services import order_matching, resends
from pacs.services.index_db import OrmIndex, PostgresIndex, mpps_completed
from pacs.services.index_plan import (
    AlreadyStored,
    InstanceAttributes,
    InstanceConflict,
    Plan,
    plan_instance,
    plan_replacement,
    remembered,
)
from ris.services.transitions import transition

__all__ = ["AlreadyStored", "InstanceAttributes", "InstanceConflict", "StoreResult", "store_instance"]

log = logging.getLogger("pacs.images")


@dataclass(frozen=True)
class StoreResult:
    instance_id: int
    study_id: int
    created: bool  # False: a resend of an instance already stored
    reopened: bool  # a late instance re-opened a completed study
    mpps_completed: bool = False  # an MPPS of the study is COMPLETED: check completion now


# True: on PostgreSQL, its own reader and writer (``index_db.PostgresIndex``); False: the ORM's,
# as on any other database (the tests run both on PostgreSQL).
FAST_INDEX = True

_ORM = OrmIndex()
_POSTGRES = PostgresIndex()


def _index_db() -> OrmIndex:
    return _POSTGRES if connection.vendor == "postgresql" and FAST_INDEX else _ORM


# SeriesInstanceUID -> (study id, series id), remembered after a commit that indexed an
# instance of the series: the next instance of the series is planned without a read, and its
# writer checks in the same statement what was remembered (``index_plan.remembered``).
_SERIES_CACHE: dict[str, tuple[int, int]] = {}
_SERIES_CACHE_MAX = 10000


def _remember(series_instance_uid: str, study_id: int, series_id: int) -> None:
    if len(_SERIES_CACHE) >= _SERIES_CACHE_MAX:
        _SERIES_CACHE.clear()
    _SERIES_CACHE[series_instance_uid] = (study_id, series_id)


def store_instance(attrs: InstanceAttributes, temporary: Path) -> StoreResult:
    """Put a fsynced temporary file in its place and index it (see module docstring)."""
    try:
        relative = storage.relative_path(attrs.study_instance_uid, attrs.series_instance_uid, attrs.sop_instance_uid)
        storage.require_uid(attrs.sop_class_uid, "SOPClassUID")
        storage.require_uid(attrs.transfer_syntax_uid, "TransferSyntaxUID")
    except storage.InvalidUID:
        storage.discard(temporary)
        raise
    db = _index_db()
    known = _SERIES_CACHE.get(attrs.series_instance_uid)
    if known is not None and db.write_remembered is not None and not connection.in_atomic_block:
        placed = storage.place_new_file(temporary, relative)
        if placed is not None:
            # The file's fsyncs run while the index statement runs; its transaction commits
            # only after they returned, so nothing is indexed before the file is durable.
            final, durable = placed
            try:
                result = _index_remembered(db, attrs, known, relative, final.stat().st_size, durable.result)
                if result is None:
                    durable.result()
                    result = _index(db, attrs, relative, final.stat().st_size)
                return result
            except AlreadyStored:
                pass
            except BaseException:
                storage.discard(final)
                raise
            try:
                durable.result()  # no file was there: it may become the stored one (_restore_purged)
            except BaseException:
                storage.discard(final)
                raise
            return _store_resend(attrs, final, placed=True)
    if storage.absolute_path(relative).exists() and Instance.objects.filter(
            sop_instance_uid=attrs.sop_instance_uid).exists():
        return _store_resend(attrs, temporary, placed=False)
    final, replaced = storage.commit_file(temporary, relative)
    try:
        return _index(db, attrs, relative, final.stat().st_size)
    except AlreadyStored:
        pass
    except BaseException:
        if not replaced:
            storage.discard(final)
        raise
    return _store_resend(attrs, final, placed=True)


def _index_remembered(db: PostgresIndex, attrs: InstanceAttributes, known: tuple[int, int], relative: str,
                      size: int, before_commit) -> StoreResult | None:
    """The usual instance, of a series this process indexed before, planned from what it
    remembers and written in one statement; None when the database is not as remembered
    (nothing written: ``_index`` reads it)."""
    plan = plan_instance(attrs, remembered(attrs, known), relative=relative, size=size, now=timezone.now())
    try:
        written = db.write_remembered(plan, before_commit)
    except IntegrityError:
        _SERIES_CACHE.pop(attrs.series_instance_uid, None)  # the remembered series row is gone
        return None
    if written is None:
        return None
    mpps, instance_id = written
    return StoreResult(instance_id, plan.study_id, created=True, reopened=False, mpps_completed=mpps)


def _index(db: OrmIndex, attrs: InstanceAttributes, relative: str, size: int) -> StoreResult:
    """Read, plan and write in one durable transaction (module docstring)."""
    now = timezone.now()
    for attempt in range(3):
        try:
            with transaction.atomic(durable=True):
                plan = plan_instance(attrs, db.read(attrs), relative=relative, size=size, now=now)
                study_id, series_id, instance_id = db.write(plan)
                reopened, mpps = _after_write(plan, study_id, attrs)
        except IntegrityError:
            # Another association wrote the same study, series or instance meanwhile: read again.
            if attempt == 2:
                raise
            continue
        _remember(attrs.series_instance_uid, study_id, series_id)
        return StoreResult(instance_id, study_id, created=True, reopened=reopened, mpps_completed=mpps)
    raise DatabaseError("unreachable")


def _after_write(plan: Plan, study_id: int, attrs: InstanceAttributes) -> tuple[bool, bool]:
    """What the plan asks beyond its rows, in the same transaction: the study re-opened
    (recorded as a status change), a new study matched to its order.  Returns (re-opened,
    a COMPLETED MPPS names the study)."""
    reopened = False
    if plan.reopen_cause:
        reopened = transition(Study.objects.get(pk=study_id), im.RECEIVING, entity="study",
                              cause=plan.reopen_cause, actor=attrs.calling_ae_title or "C-STORE")
    mpps = plan.mpps_completed
    if plan.match_order:
        order_matching.match_study(Study.objects.get(pk=study_id))
        mpps = mpps_completed(study_id)
    return reopened, mpps


def _store_resend(attrs: InstanceAttributes, received: Path, *, placed: bool) -> StoreResult:
    """A C-STORE of a SOP Instance UID that has an index row (``pacs.services.resends``).
    ``received`` is the new version's file: the temporary one, or (``placed``) a file put at
    its final name where none was.  It is removed unless it becomes the stored version, and
    never when it is at the stored version's path: another association storing the same SOP
    Instance UID may have indexed that file meanwhile (a modality that resends after a timeout
    while the first association is still being indexed)."""
    owned = received
    try:
        row = Instance.objects.filter(sop_instance_uid=attrs.sop_instance_uid).values(
            "pk", "study_id", "path", "dataset_sha256").first()
        if row is None:
            raise DatabaseError("the stored instance disappeared while its resend was received")
        stored_path = storage.absolute_path(row["path"])
        if placed and received == stored_path:
            owned = None
            if Study.objects.filter(pk=row["study_id"], purged_at__isnull=False).exists():
                return _restore_purged(attrs, row, received)
        stored_sha256 = resends.stored_sha256(row["pk"], row["dataset_sha256"], stored_path)
        attrs = dataclasses.replace(attrs, dataset_sha256=attrs.dataset_sha256 or resends.received_sha256(received))
        action = resends.decide(stored_sha256, attrs.dataset_sha256)
        if action == resends.IDENTICAL:
            return StoreResult(row["pk"], row["study_id"], created=False, reopened=False)
        found = resends.differences(stored_path, received)
        if action == im.OVERWRITE_REPLACE:
            owned = None  # _replace owns it now
            return _replace(attrs, row, received, placed=placed, found=found, stored_sha256=stored_sha256)
        with transaction.atomic():
            resends.record(study_id=row["study_id"], instance_id=row["pk"], sop_instance_uid=attrs.sop_instance_uid,
                           action=action, found=found, stored_sha256=stored_sha256,
                           received_sha256=attrs.dataset_sha256, calling_ae_title=attrs.calling_ae_title)
        if action == im.OVERWRITE_REJECT:
            raise resends.ResendRejected(attrs.sop_instance_uid)
        return StoreResult(row["pk"], row["study_id"], created=False, reopened=False)
    finally:
        storage.discard(owned)


def _restore_purged(attrs: InstanceAttributes, row: dict, received: Path) -> StoreResult:
    """An instance of a study purged after archiving, received again (fetched back from the VNA,
    ``pacs.services.recall``): its file was gone and the received one is now in its place.  There
    is no local version to compare with, so the archive's version becomes the cached copy (it
    may carry the patient corrections sent to the VNA); its row is updated to describe it.  The
    study is held again once every instance is back (``routing.archive.restore_purged``)."""
    digest = attrs.dataset_sha256 or resends.received_sha256(received)
    Instance.objects.filter(pk=row["pk"]).update(transfer_syntax_uid=attrs.transfer_syntax_uid,
                                                 size=received.stat().st_size, dataset_sha256=digest)
    return StoreResult(row["pk"], row["study_id"], created=False, reopened=False)


def _replace(attrs: InstanceAttributes, row: dict, received: Path, *, placed: bool, found: list[dict],
             stored_sha256: str) -> StoreResult:
    """STORE_OVERWRITE_POLICY=replace: the stored file set aside (kept until the study is
    archived), the new one put at the path its UIDs give, and in one durable transaction the
    rows ``index_plan.plan_replacement`` plans and the record.  If the transaction fails, the
    new file goes and the old one comes back."""
    relative = storage.relative_path(attrs.study_instance_uid, attrs.series_instance_uid, attrs.sop_instance_uid)
    db = _index_db()
    kept = ""
    final = received
    try:
        if storage.absolute_path(row["path"]).exists() and not (placed and row["path"] == relative):
            kept = storage.set_aside(row["path"])
        if not placed:
            final, _ = storage.commit_file(received, relative)
        with transaction.atomic(durable=True):
            plan = plan_replacement(attrs, db.read(attrs), instance_id=row["pk"], relative=relative,
                                    size=final.stat().st_size, now=timezone.now())
            study_id, series_id, _ = db.write(plan)
            reopened, mpps = _after_write(plan, study_id, attrs)
            resends.record(study_id=row["study_id"], instance_id=row["pk"], sop_instance_uid=attrs.sop_instance_uid,
                           action=im.OVERWRITE_REPLACE, found=found, stored_sha256=stored_sha256,
                           received_sha256=attrs.dataset_sha256, calling_ae_title=attrs.calling_ae_title,
                           replaced_path=kept)
        _remember(attrs.series_instance_uid, study_id, series_id)
        return StoreResult(row["pk"], study_id, created=False, reopened=reopened, mpps_completed=mpps)
    except BaseException:
        storage.discard(final)
        if kept:
            storage.put_back(kept, row["path"])
        raise
