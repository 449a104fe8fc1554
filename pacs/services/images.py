"""Receiving an instance: file committed to the store, then the index, then Success.

``store_instance`` takes plain values (``InstanceAttributes``, read from the header by the
DIMSE adapter ``pacs.dimse.store``) and a fsynced temporary file in the store.  Order of
work (conventions: persist before you acknowledge; reliability D-06, D-07):

1. UIDs validated, path derived from them only (``pacs.storage``);
2. the temporary file renamed into place (atomic) unless an indexed file is there;
3. Study / Series / Instance written in one durable transaction; a new study is matched to
   its order (``pacs.services.order_matching``); a late instance re-opens a completed study;
4. only then the caller answers Success.  If the transaction fails, a file that did not
   exist before is removed again and the caller answers a failure status.

The index writers (the ORM one and PostgreSQL's) never change an instance row that exists:
they raise ``AlreadyStored`` and ``_store_resend`` applies what ``pacs.services.resends``
decides (identical: nothing changes; else STORE_OVERWRITE_POLICY), the same on every database.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from pacs import storage
from pacs.models import Instance, Series, Study
from pacs.models import images as im
from pacs.services import resends
from ris.services.transitions import transition

log = logging.getLogger("pacs.images")


class InstanceConflict(ValueError):
    """The Series Instance UID is already stored under another study."""


class AlreadyStored(Exception):
    """The SOP Instance UID has an index row: nothing was written (``_store_resend`` decides)."""


@dataclass(frozen=True)
class InstanceAttributes:
    """What the index keeps of one instance (DICOM keywords in snake case)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    accession_number: str = ""
    issuer_of_accession_number: str = ""
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_date: dt.date | None = None
    study_time: str = ""
    study_description: str = ""
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    instance_number: int | None = None
    calling_ae_title: str = ""
    dataset_sha256: str = ""  # of the data set as received, when known (a resend: pacs.services.resends)


@dataclass(frozen=True)
class StoreResult:
    instance_id: int
    study_id: int
    created: bool  # False: a resend of an instance already stored
    reopened: bool  # a late instance re-opened a completed study
    mpps_completed: bool = False  # an MPPS of the study is COMPLETED: check completion now


def _completed_mpps():
    """COMPLETED MPPS naming the outer study, by Study Instance UID or through its order's steps."""
    from pacs.models import PerformedProcedureStep
    from pacs.models import mpps as mp

    return PerformedProcedureStep.objects.filter(
        Q(study_instance_uid=OuterRef("study_instance_uid"))
        | Q(scheduled_step__requested_procedure=OuterRef("requested_procedure")),
        status=mp.COMPLETED,
    )


def store_instance(attrs: InstanceAttributes, temporary: Path) -> StoreResult:
    """Put a fsynced temporary file in its place and index it (see module docstring)."""
    try:
        relative = storage.relative_path(attrs.study_instance_uid, attrs.series_instance_uid, attrs.sop_instance_uid)
        storage.require_uid(attrs.sop_class_uid, "SOPClassUID")
        storage.require_uid(attrs.transfer_syntax_uid, "TransferSyntaxUID")
    except storage.InvalidUID:
        storage.discard(temporary)
        raise
    fast = connection.vendor == "postgresql" and FAST_INDEX
    if fast and attrs.series_instance_uid in _SERIES_CACHE and not connection.in_atomic_block:
        placed = storage.place_new_file(temporary, relative)
        if placed is not None:
            # The file's fsyncs run while the index statement runs; its transaction commits
            # only after they returned, so nothing is indexed before the file is durable.
            final, durable = placed
            try:
                result = _index_one_statement(attrs, relative, final.stat().st_size, before_commit=durable.result)
                if result is None:
                    durable.result()
                    result = _index_postgresql(attrs, relative, final.stat().st_size)
                return result
            except (AlreadyStored, InstanceConflict) as exc:
                if not _is_resend(exc, attrs):
                    storage.discard(final)
                    raise
            except BaseException:
                storage.discard(final)
                raise
            return _store_resend(attrs, final, placed=True)
    if storage.absolute_path(relative).exists() and Instance.objects.filter(
            sop_instance_uid=attrs.sop_instance_uid).exists():
        return _store_resend(attrs, temporary, placed=False)
    final, replaced = storage.commit_file(temporary, relative)
    size = final.stat().st_size
    try:
        if fast:
            return _index_postgresql(attrs, relative, size)
        return _index(attrs, relative, size)
    except (AlreadyStored, InstanceConflict) as exc:
        if not _is_resend(exc, attrs):
            if not replaced:
                storage.discard(final)
            raise
    except BaseException:
        if not replaced:
            storage.discard(final)
        raise
    return _store_resend(attrs, final, placed=True)


def _is_resend(exc: Exception, attrs: InstanceAttributes) -> bool:
    """The index refused the instance because its SOP Instance UID is stored (a resend, also
    when its series is stored under another study), not for a conflict of a new instance."""
    return isinstance(exc, AlreadyStored) or Instance.objects.filter(sop_instance_uid=attrs.sop_instance_uid).exists()


# SeriesInstanceUID -> (study pk, series pk): series rows are never moved between studies,
# so the lookup is skipped for every instance after the first of a series (per process).
_SERIES_CACHE: dict[str, tuple[int, int]] = {}
_SERIES_CACHE_MAX = 10000


def _index(attrs: InstanceAttributes, relative: str, size: int) -> StoreResult:
    """One durable transaction: study locked and touched, series found, instance inserted or
    (a resend) updated.  Four statements for the usual instance of a known series."""
    now = timezone.now()
    for attempt in range(3):
        try:
            with transaction.atomic(durable=True):
                row = (
                    Study.objects.select_for_update(of=("self",))
                    .filter(study_instance_uid=attrs.study_instance_uid)
                    .annotate(mpps_completed=Exists(_completed_mpps()))
                    .values_list("pk", "status", "modalities_in_study", "mpps_completed")
                    .first()
                )
                study_created = row is None
                if study_created:
                    study = _create_study(attrs, now)
                    row = (study.pk, study.status, study.modalities_in_study, False)
                study_id, status, modalities_text, mpps_completed = row
                series_id = _series_id(study_id, attrs)
                existing = Instance.objects.filter(sop_instance_uid=attrs.sop_instance_uid).values_list("pk").first()
                if existing is not None:
                    raise AlreadyStored(attrs.sop_instance_uid)
                created = True
                instance_id = Instance.objects.create(
                    study_id=study_id, series_id=series_id, sop_instance_uid=attrs.sop_instance_uid,
                    sop_class_uid=attrs.sop_class_uid, transfer_syntax_uid=attrs.transfer_syntax_uid,
                    instance_number=attrs.instance_number, path=relative, size=size, received_at=now,
                    dataset_sha256=attrs.dataset_sha256,
                ).pk
                changes = {"last_received_at": now, "updated_at": now}
                if (listed := _modalities_with(modalities_text, attrs.modality)) is not None:
                    changes["modalities_in_study"] = listed
                Study.objects.filter(pk=study_id).update(**changes)
                reopened = False
                if created and status != im.RECEIVING:
                    study = Study.objects.get(pk=study_id)
                    transition(
                        study, im.RECEIVING, entity="study", cause=f"late instance {attrs.sop_instance_uid}",
                        actor=attrs.calling_ae_title or "C-STORE",
                    )
                    reopened = True
                if study_created:
                    from pacs.services import order_matching

                    order_matching.match_study(Study.objects.get(pk=study_id))
                    mpps_completed = Study.objects.filter(pk=study_id).filter(Exists(_completed_mpps())).exists()
            return StoreResult(instance_id, study_id, created, reopened, mpps_completed)
        except AlreadyStored:
            _SERIES_CACHE.pop(attrs.series_instance_uid, None)  # its series may be rolled back
            raise
        except IntegrityError:
            # Two associations created the same study/series/instance at once: the loser retries.
            _SERIES_CACHE.pop(attrs.series_instance_uid, None)
            if attempt == 2:
                raise
    raise DatabaseError("unreachable")


# PostgreSQL: one statement for the usual instance (``_index_one_statement``), else two
# (UPDATE ... RETURNING, INSERT ... ON CONFLICT); False (or another database) uses the
# portable ORM path ``_index``.
FAST_INDEX = True


def _mpps_completed_sql() -> str:
    """EXISTS over the study row in scope: a COMPLETED MPPS names it, by Study Instance UID or
    through its order's steps (``_completed_mpps`` in SQL).  Parameter: ``completed``."""
    from pacs.models import PerformedProcedureStep
    from ris.models import ScheduledProcedureStep

    study = Study._meta.db_table
    return f"""EXISTS (
        SELECT 1 FROM {PerformedProcedureStep._meta.db_table} p
        LEFT JOIN {ScheduledProcedureStep._meta.db_table} q ON q.id = p.scheduled_step_id
        WHERE p.status = %(completed)s AND (p.study_instance_uid = {study}.study_instance_uid
              OR q.requested_procedure_id = {study}.requested_procedure_id))"""


def _instance_upsert_sql(rows: str) -> str:
    """INSERT of the instance ``rows`` (VALUES or SELECT giving study_id and the parameters
    below); no row returned when the SOP Instance UID is stored already (``_store_resend``
    decides then).  Returns (id, created)."""
    instance = Instance._meta.db_table
    return f"""INSERT INTO {instance} (study_id, series_id, sop_instance_uid, sop_class_uid,
            transfer_syntax_uid, instance_number, path, size, batch, received_at, dataset_sha256)
        {rows}
        ON CONFLICT (sop_instance_uid) DO NOTHING
        RETURNING id, true AS created"""


# The instance's own columns after study_id, as the parameters of ``_instance_upsert_sql``.
_INSTANCE_COLUMNS = ("%(series_id)s, %(sop_uid)s, %(sop_class)s, %(syntax)s, %(number)s, %(path)s, %(size)s, NULL,"
                     " %(now)s, %(sha256)s")


def _instance_params(attrs: InstanceAttributes, relative: str, size: int, series_id: int, now) -> dict:
    return {"series_id": series_id, "sop_uid": attrs.sop_instance_uid, "sop_class": attrs.sop_class_uid,
            "syntax": attrs.transfer_syntax_uid, "number": attrs.instance_number, "path": relative, "size": size,
            "now": now, "sha256": attrs.dataset_sha256}


def _index_postgresql(attrs: InstanceAttributes, relative: str, size: int) -> StoreResult:
    """``_index`` in two statements on PostgreSQL: the study row is touched (and so locked) with
    UPDATE ... RETURNING, which also says whether a COMPLETED MPPS names it; the instance is
    inserted with INSERT ... ON CONFLICT DO NOTHING RETURNING: no row for a SOP Instance UID
    stored already, and then nothing of this transaction is kept (``AlreadyStored``)."""
    from pacs.models import mpps as mp

    study_table = Study._meta.db_table
    now = timezone.now()
    for attempt in range(3):
        try:
            with transaction.atomic(durable=True), connection.cursor() as cursor:
                cursor.execute(
                    f"""UPDATE {study_table} SET last_received_at = %(now)s, updated_at = %(now)s
                        WHERE study_instance_uid = %(study_uid)s
                        RETURNING id, status, modalities_in_study, {_mpps_completed_sql()}""",
                    {"now": now, "study_uid": attrs.study_instance_uid, "completed": mp.COMPLETED},
                )
                row = cursor.fetchone()
                study_created = row is None
                if study_created:
                    study = _create_study(attrs, now)
                    row = (study.pk, study.status, study.modalities_in_study, False)
                study_id, status, modalities_text, mpps_completed = row
                series_id = _series_id(study_id, attrs)
                cursor.execute(
                    _instance_upsert_sql(f"VALUES (%(study_id)s, {_INSTANCE_COLUMNS})"),
                    {"study_id": study_id, **_instance_params(attrs, relative, size, series_id, now)},
                )
                inserted = cursor.fetchone()
                if inserted is None:
                    raise AlreadyStored(attrs.sop_instance_uid)
                instance_id, created = inserted
                if (listed := _modalities_with(modalities_text, attrs.modality)) is not None:
                    Study.objects.filter(pk=study_id).update(modalities_in_study=listed)
                reopened = False
                if created and status != im.RECEIVING:
                    transition(
                        Study.objects.get(pk=study_id), im.RECEIVING, entity="study",
                        cause=f"late instance {attrs.sop_instance_uid}", actor=attrs.calling_ae_title or "C-STORE",
                    )
                    reopened = True
                if study_created:
                    from pacs.services import order_matching

                    order_matching.match_study(Study.objects.get(pk=study_id))
                    mpps_completed = Study.objects.filter(pk=study_id).filter(Exists(_completed_mpps())).exists()
            return StoreResult(instance_id, study_id, bool(created), reopened, bool(mpps_completed))
        except AlreadyStored:
            _SERIES_CACHE.pop(attrs.series_instance_uid, None)  # its series may be rolled back
            raise
        except IntegrityError:
            _SERIES_CACHE.pop(attrs.series_instance_uid, None)
            if attempt == 2:
                raise
    raise DatabaseError("unreachable")


# How stale Study.last_received_at may get while a study is receiving (quiet-period completion
# waits STUDY_QUIET_PERIOD_SECONDS, 60 s by default, after it).
TOUCH_EVERY = dt.timedelta(seconds=1)


def _index_one_statement(attrs: InstanceAttributes, relative: str, size: int, *,
                         before_commit) -> StoreResult | None:
    """The usual instance -- of a series already seen by this process, of a study that is
    receiving and already lists the modality -- indexed in ONE statement (instead of four):
    the study row locked (FOR NO KEY UPDATE: no new row version), its ``last_received_at``
    moved when older than TOUCH_EVERY (each update writes all eleven of the study's index
    entries; the quiet period is counted in tens of seconds) and the instance inserted by
    data-modifying CTEs (a stored SOP Instance UID inserts nothing: None).  ``before_commit()`` is called (it waits for the
    file's fsyncs, and raises if they failed) before the durable commit.  None when the
    instance is not of that kind (nothing is inserted then): ``_index_postgresql`` does the
    general case."""
    from pacs.models import mpps as mp
    from ris.services import pg

    cached = _SERIES_CACHE.get(attrs.series_instance_uid)
    if cached is None or connection.in_atomic_block:
        return None
    study_id, series_id = cached
    study_table = Study._meta.db_table
    now = timezone.now()
    pg.cursor().close()  # prepares the session outside the transaction (pacs.services.pg)
    with transaction.atomic(durable=True), pg.cursor() as cursor:
        cursor.execute(
            f"""WITH s AS (
                    SELECT id, {_mpps_completed_sql()} AS mpps_completed
                    FROM {study_table}
                    WHERE id = %(study_id)s AND study_instance_uid = %(study_uid)s AND status = %(receiving)s
                      AND (%(modality)s = '' OR %(modality)s = ANY (string_to_array(modalities_in_study, '\\')))
                    FOR NO KEY UPDATE OF {study_table}
                ), touched AS (
                    UPDATE {study_table} SET last_received_at = %(now)s, updated_at = %(now)s
                    WHERE id = (SELECT id FROM s) AND last_received_at < %(stale)s
                ), i AS (
                    {_instance_upsert_sql(f"SELECT s.id, {_INSTANCE_COLUMNS} FROM s")}
                )
                SELECT s.mpps_completed, i.id, i.created FROM s JOIN i ON true""",
            {"stale": now - TOUCH_EVERY, "study_id": study_id, "study_uid": attrs.study_instance_uid,
             "receiving": im.RECEIVING, "modality": attrs.modality, "completed": mp.COMPLETED,
             **_instance_params(attrs, relative, size, series_id, now)},
        )
        row = cursor.fetchone()
        before_commit()
    if row is None:
        return None
    mpps_completed, instance_id, created = row
    return StoreResult(instance_id, study_id, bool(created), False, bool(mpps_completed))


def _series_id(study_id: int, attrs: InstanceAttributes) -> int:
    cached = _SERIES_CACHE.get(attrs.series_instance_uid)
    if cached is not None and cached[0] == study_id:
        return cached[1]
    row = Series.objects.filter(series_instance_uid=attrs.series_instance_uid).values_list("pk", "study_id").first()
    if row is None:
        with transaction.atomic():
            series_id = Series.objects.create(
                study_id=study_id, series_instance_uid=attrs.series_instance_uid, modality=attrs.modality[:16],
                series_number=attrs.series_number, series_description=attrs.series_description[:64],
            ).pk
    else:
        series_id, owner = row
        if owner != study_id:
            raise InstanceConflict(f"Series {attrs.series_instance_uid} belongs to another study")
    if len(_SERIES_CACHE) >= _SERIES_CACHE_MAX:
        _SERIES_CACHE.clear()
    _SERIES_CACHE[attrs.series_instance_uid] = (study_id, series_id)
    return series_id


def _study_attributes(attrs: InstanceAttributes) -> dict:
    """The patient and study attributes a Study row keeps, as the instance gives them."""
    return {
        "accession_number": attrs.accession_number[:16],
        "issuer_of_accession_number": attrs.issuer_of_accession_number[:64],
        "patient_id": attrs.patient_id[:64],
        "issuer_of_patient_id": attrs.issuer_of_patient_id[:64],
        "patient_name": attrs.patient_name[:320],
        "patient_birth_date": attrs.patient_birth_date[:8],
        "patient_sex": attrs.patient_sex[:16],
        "study_date": attrs.study_date,
        "study_time": attrs.study_time[:16],
        "study_description": attrs.study_description[:64],
    }


def _create_study(attrs: InstanceAttributes, now) -> Study:
    with transaction.atomic():
        study = Study.objects.create(
            study_instance_uid=attrs.study_instance_uid,
            **_study_attributes(attrs),
            modalities_in_study=attrs.modality[:16],
            calling_ae_title=attrs.calling_ae_title[:16],
            last_received_at=now,
        )
    return Study.objects.select_for_update().get(pk=study.pk)


def _modalities_with(modalities_in_study: str, modality: str) -> str | None:
    """ModalitiesInStudy (0008,0061) with ``modality`` added; None when it is listed already."""
    modalities = [m for m in modalities_in_study.split("\\") if m]
    if not modality or modality in modalities:
        return None
    return "\\".join([*modalities, modality])[:64]


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


def _replace(attrs: InstanceAttributes, row: dict, received: Path, *, placed: bool, found: list[dict],
             stored_sha256: str) -> StoreResult:
    """STORE_OVERWRITE_POLICY=replace: the stored file set aside (kept until the study is
    archived), the new one put at the path its UIDs give, and in one durable transaction the
    instance row (study and series linkage, file, digest; not sent yet), the study's patient
    and study attributes, the re-opening of a study already completed or archived (the next
    completion sends the new version to the VNA, as a late instance) and the record.  If the
    transaction fails, the new file goes and the old one comes back."""
    relative = storage.relative_path(attrs.study_instance_uid, attrs.series_instance_uid, attrs.sop_instance_uid)
    kept = ""
    final = received
    try:
        if storage.absolute_path(row["path"]).exists() and not (placed and row["path"] == relative):
            kept = storage.set_aside(row["path"])
        if not placed:
            final, _ = storage.commit_file(received, relative)
        now = timezone.now()
        with transaction.atomic(durable=True):
            study = Study.objects.select_for_update().filter(study_instance_uid=attrs.study_instance_uid).first()
            study_created = study is None
            if study_created:
                study = _create_study(attrs, now)
            series_id = _series_id(study.pk, attrs)
            Instance.objects.filter(pk=row["pk"]).update(
                study_id=study.pk, series_id=series_id, sop_class_uid=attrs.sop_class_uid,
                transfer_syntax_uid=attrs.transfer_syntax_uid, instance_number=attrs.instance_number,
                path=relative, size=final.stat().st_size, received_at=now, dataset_sha256=attrs.dataset_sha256,
                batch=None,
            )
            changes = {**_study_attributes(attrs), "last_received_at": now, "updated_at": now}
            if (listed := _modalities_with(study.modalities_in_study, attrs.modality)) is not None:
                changes["modalities_in_study"] = listed
            Study.objects.filter(pk=study.pk).update(**changes)
            study.refresh_from_db()
            reopened = transition(
                study, im.RECEIVING, entity="study", cause=f"replaced instance {attrs.sop_instance_uid}",
                actor=attrs.calling_ae_title or "C-STORE",
            )
            resends.record(study_id=row["study_id"], instance_id=row["pk"], sop_instance_uid=attrs.sop_instance_uid,
                           action=im.OVERWRITE_REPLACE, found=found, stored_sha256=stored_sha256,
                           received_sha256=attrs.dataset_sha256, calling_ae_title=attrs.calling_ae_title,
                           replaced_path=kept)
            if study_created:
                from pacs.services import order_matching

                order_matching.match_study(Study.objects.get(pk=study.pk))
            mpps_completed = Study.objects.filter(pk=study.pk).filter(Exists(_completed_mpps())).exists()
        return StoreResult(row["pk"], study.pk, created=False, reopened=reopened, mpps_completed=mpps_completed)
    except BaseException:
        _SERIES_CACHE.pop(attrs.series_instance_uid, None)
        storage.discard(final)
        if kept:
            storage.put_back(kept, row["path"])
        raise
