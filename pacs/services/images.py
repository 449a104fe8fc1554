"""Receiving an instance: file committed to the store, then the index, then Success.

``store_instance`` takes plain values (``InstanceAttributes``, read from the header by the
DIMSE adapter ``pacs.dimse.store``) and a fsynced temporary file in the store.  Order of
work (conventions: persist before you acknowledge; reliability D-06, D-07):

1. UIDs validated, path derived from them only (``pacs.storage``);
2. the temporary file renamed into place (atomic; a resend replaces the old copy);
3. Study / Series / Instance written in one durable transaction; a new study is matched to
   its order (``pacs.services.order_matching``); a late instance re-opens a completed study;
4. only then the caller answers Success.  If the transaction fails, a file that did not
   exist before is removed again and the caller answers a failure status.
"""

from __future__ import annotations

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
from ris.services.transitions import transition

log = logging.getLogger("pacs.images")


class InstanceConflict(ValueError):
    """The SOP Instance UID is already stored under another study or series."""


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
            except BaseException:
                storage.discard(final)
                raise
    final, replaced = storage.commit_file(temporary, relative)
    size = final.stat().st_size
    try:
        if fast:
            return _index_postgresql(attrs, relative, size)
        return _index(attrs, relative, size)
    except BaseException:
        if not replaced:
            storage.discard(final)
        raise


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
                existing = (
                    Instance.objects.filter(sop_instance_uid=attrs.sop_instance_uid)
                    .values_list("pk", "study_id", "series_id")
                    .first()
                )
                created = existing is None
                if created:
                    instance_id = Instance.objects.create(
                        study_id=study_id, series_id=series_id, sop_instance_uid=attrs.sop_instance_uid,
                        sop_class_uid=attrs.sop_class_uid, transfer_syntax_uid=attrs.transfer_syntax_uid,
                        instance_number=attrs.instance_number, path=relative, size=size, received_at=now,
                    ).pk
                else:
                    instance_id, old_study, old_series = existing
                    if (old_study, old_series) != (study_id, series_id):
                        raise InstanceConflict(
                            f"SOP Instance UID {attrs.sop_instance_uid} is already stored in another study/series"
                        )
                    Instance.objects.filter(pk=instance_id).update(
                        sop_class_uid=attrs.sop_class_uid, transfer_syntax_uid=attrs.transfer_syntax_uid,
                        size=size, received_at=now,
                    )
                changes = {"last_received_at": now, "updated_at": now}
                modalities = [m for m in modalities_text.split("\\") if m]
                if attrs.modality and attrs.modality not in modalities:
                    changes["modalities_in_study"] = "\\".join([*modalities, attrs.modality])[:64]
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
    below), or the update of a resend of it; no row returned for a SOP Instance UID stored under
    another study or series.  Returns (id, created) with created = (xmax = 0)."""
    instance = Instance._meta.db_table
    return f"""INSERT INTO {instance} (study_id, series_id, sop_instance_uid, sop_class_uid,
            transfer_syntax_uid, instance_number, path, size, batch, received_at)
        {rows}
        ON CONFLICT (sop_instance_uid) DO UPDATE SET sop_class_uid = EXCLUDED.sop_class_uid,
            transfer_syntax_uid = EXCLUDED.transfer_syntax_uid, size = EXCLUDED.size,
            received_at = EXCLUDED.received_at
        WHERE {instance}.study_id = EXCLUDED.study_id AND {instance}.series_id = EXCLUDED.series_id
        RETURNING id, (xmax = 0) AS created"""


# The instance's own columns after study_id, as the parameters of ``_instance_upsert_sql``.
_INSTANCE_COLUMNS = "%(series_id)s, %(sop_uid)s, %(sop_class)s, %(syntax)s, %(number)s, %(path)s, %(size)s, NULL, %(now)s"


def _instance_params(attrs: InstanceAttributes, relative: str, size: int, series_id: int, now) -> dict:
    return {"series_id": series_id, "sop_uid": attrs.sop_instance_uid, "sop_class": attrs.sop_class_uid,
            "syntax": attrs.transfer_syntax_uid, "number": attrs.instance_number, "path": relative, "size": size,
            "now": now}


def _index_postgresql(attrs: InstanceAttributes, relative: str, size: int) -> StoreResult:
    """``_index`` in two statements on PostgreSQL: the study row is touched (and so locked) with
    UPDATE ... RETURNING, which also says whether a COMPLETED MPPS names it; the instance is
    inserted, or a resend of it updated, with INSERT ... ON CONFLICT ... RETURNING (xmax = 0 for
    a new row).  A SOP Instance UID stored under another study or series returns no row."""
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
                    raise InstanceConflict(
                        f"SOP Instance UID {attrs.sop_instance_uid} is already stored in another study/series"
                    )
                instance_id, created = inserted
                modalities = [m for m in modalities_text.split("\\") if m]
                if attrs.modality and attrs.modality not in modalities:
                    Study.objects.filter(pk=study_id).update(
                        modalities_in_study="\\".join([*modalities, attrs.modality])[:64])
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
    entries; the quiet period is counted in tens of seconds) and the instance inserted (or a
    resend updated) by data-modifying CTEs.  ``before_commit()`` is called (it waits for the
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


def _create_study(attrs: InstanceAttributes, now) -> Study:
    with transaction.atomic():
        study = Study.objects.create(
            study_instance_uid=attrs.study_instance_uid,
            accession_number=attrs.accession_number[:16],
            issuer_of_accession_number=attrs.issuer_of_accession_number[:64],
            patient_id=attrs.patient_id[:64],
            issuer_of_patient_id=attrs.issuer_of_patient_id[:64],
            patient_name=attrs.patient_name[:320],
            patient_birth_date=attrs.patient_birth_date[:8],
            patient_sex=attrs.patient_sex[:16],
            study_date=attrs.study_date,
            study_time=attrs.study_time[:16],
            study_description=attrs.study_description[:64],
            modalities_in_study=attrs.modality[:16],
            calling_ae_title=attrs.calling_ae_title[:16],
            last_received_at=now,
        )
    return Study.objects.select_for_update().get(pk=study.pk)
