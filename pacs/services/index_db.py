"""Reading what the database holds for a received instance, and writing a ``Plan``
(``pacs.services.index_plan``): one reader and one writer per database kind, none of which
decides anything.

- ``OrmIndex``: any database Django supports (SQLite on a laptop); the study row is locked
  with SELECT ... FOR UPDATE where the database has it.
- ``PostgresIndex``: the same rows with fewer round trips.  The reader is one statement
  (the study row locked FOR NO KEY UPDATE, with whether a COMPLETED MPPS names it, its series
  and an index row of its SOP Instance UID); the instance is inserted by a prepared
  INSERT ... ON CONFLICT DO NOTHING.  A plan made from a remembered ``Held`` (the usual
  instance: of a series this process indexed before) is written in ONE prepared statement
  (data-modifying CTEs, PostgreSQL 7.8.4) that checks ``Plan.requires`` on the locked study row
  and writes nothing when the row differs.

A database that changed between the read and the write (another association inserted the same
SOP Instance UID, or the same study or series, meanwhile) makes the writer raise
``IntegrityError``: the caller reads and plans again.
"""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q

from pacs.models import Instance, PerformedProcedureStep, Series, Study
from pacs.models import mpps as mp
from pacs.services.index_plan import Held, Plan, SeriesHeld, StudyHeld
from ris.models import ScheduledProcedureStep
from ris.services import pg


def completed_mpps():
    """COMPLETED MPPS naming the outer study, by Study Instance UID or through its order's steps."""
    return PerformedProcedureStep.objects.filter(
        Q(study_instance_uid=OuterRef("study_instance_uid"))
        | Q(scheduled_step__requested_procedure=OuterRef("requested_procedure")),
        status=mp.COMPLETED,
    )


def mpps_completed(study_id: int) -> bool:
    """Whether a COMPLETED MPPS names the study (read again after a new study is matched)."""
    return Study.objects.filter(pk=study_id).filter(Exists(completed_mpps())).exists()


class OrmIndex:
    """Reader and writer on Django's ORM."""

    def read(self, attrs) -> Held:
        """In the caller's transaction: the study row locked, its series, its instance row."""
        study = (
            Study.objects.select_for_update(of=("self",))
            .filter(study_instance_uid=attrs.study_instance_uid)
            .annotate(mpps_completed=Exists(completed_mpps()))
            .values_list("pk", "status", "modalities_in_study", "last_received_at", "mpps_completed")
            .first()
        )
        series = Series.objects.filter(series_instance_uid=attrs.series_instance_uid).values_list(
            "pk", "study_id").first()
        instance = Instance.objects.filter(sop_instance_uid=attrs.sop_instance_uid).values_list(
            "pk", flat=True).first()
        return Held(study=StudyHeld(*study) if study else None, series=SeriesHeld(*series) if series else None,
                    instance_id=instance)

    def write(self, plan: Plan) -> tuple[int, int, int]:
        """The plan's rows, in the caller's transaction.  Returns (study, series, instance) ids."""
        study_id = plan.study_id
        if plan.new_study is not None:
            study_id = Study.objects.create(**plan.new_study).pk
        elif plan.study_changes:
            Study.objects.filter(pk=study_id).update(**plan.study_changes)
        series_id = plan.series_id
        if plan.new_series is not None:
            series_id = Series.objects.create(study_id=study_id, **plan.new_series).pk
        if plan.instance_id is not None:
            Instance.objects.filter(pk=plan.instance_id).update(study_id=study_id, series_id=series_id,
                                                                **plan.instance)
            return study_id, series_id, plan.instance_id
        return study_id, series_id, self._insert_instance(plan, study_id, series_id)

    def _insert_instance(self, plan: Plan, study_id: int, series_id: int) -> int:
        return Instance.objects.create(study_id=study_id, series_id=series_id, **plan.instance).pk

    write_remembered = None  # no one-statement write: a remembered Held is read again


class PostgresIndex(OrmIndex):
    """Reader and writer on PostgreSQL (module docstring)."""

    _sql: dict[str, str] = {}

    @classmethod
    def _statements(cls) -> dict[str, str]:
        if not cls._sql:
            study, series, instance = Study._meta.db_table, Series._meta.db_table, Instance._meta.db_table
            mpps = f"""EXISTS (
                SELECT 1 FROM {PerformedProcedureStep._meta.db_table} p
                LEFT JOIN {ScheduledProcedureStep._meta.db_table} q ON q.id = p.scheduled_step_id
                WHERE p.status = %(completed)s AND (p.study_instance_uid = {study}.study_instance_uid
                      OR q.requested_procedure_id = {study}.requested_procedure_id))"""
            columns = ("study_id, series_id, sop_instance_uid, sop_class_uid, transfer_syntax_uid, instance_number,"
                       " path, size, batch, received_at, dataset_sha256")
            values = ("%(series_id)s, %(sop_instance_uid)s, %(sop_class_uid)s, %(transfer_syntax_uid)s,"
                      " %(instance_number)s, %(path)s, %(size)s, NULL, %(received_at)s, %(dataset_sha256)s")
            cls._sql.update(
                read=f"""WITH st AS (
                        SELECT id, status, modalities_in_study, last_received_at, {mpps} AS mpps_completed
                        FROM {study} WHERE study_instance_uid = %(study_uid)s
                        FOR NO KEY UPDATE OF {study}
                    )
                    SELECT st.id, st.status, st.modalities_in_study, st.last_received_at, st.mpps_completed,
                           se.id, se.study_id,
                           (SELECT id FROM {instance} WHERE sop_instance_uid = %(sop_uid)s)
                    FROM (VALUES (1)) AS one (x)
                    LEFT JOIN st ON true
                    LEFT JOIN {series} se ON se.series_instance_uid = %(series_uid)s""",
                insert=f"""INSERT INTO {instance} ({columns}) VALUES (%(study_id)s, {values})
                    ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING id""",
                remembered=f"""WITH s AS (
                        SELECT id, {mpps} AS mpps_completed
                        FROM {study}
                        WHERE id = %(study_id)s AND study_instance_uid = %(study_uid)s AND status = %(status)s
                          AND (%(modality)s = '' OR %(modality)s = ANY (string_to_array(modalities_in_study, '\\')))
                        FOR NO KEY UPDATE OF {study}
                    ), i AS (
                        INSERT INTO {instance} ({columns}) SELECT s.id, {values} FROM s
                        ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING id
                    ), touched AS (
                        UPDATE {study} SET last_received_at = %(now)s, updated_at = %(now)s
                        WHERE id = (SELECT id FROM s) AND last_received_at < %(older_than)s
                    )
                    SELECT s.mpps_completed, i.id FROM s JOIN i ON true""",
            )
        return cls._sql

    def read(self, attrs) -> Held:
        with pg.cursor() as cursor:
            cursor.execute(self._statements()["read"], {
                "study_uid": attrs.study_instance_uid, "series_uid": attrs.series_instance_uid,
                "sop_uid": attrs.sop_instance_uid, "completed": mp.COMPLETED})
            row = cursor.fetchone()
        study = StudyHeld(*row[:5]) if row[0] is not None else None
        series = SeriesHeld(row[5], row[6]) if row[5] is not None else None
        return Held(study=study, series=series, instance_id=row[7])

    def _insert_instance(self, plan: Plan, study_id: int, series_id: int) -> int:
        with pg.cursor() as cursor:
            cursor.execute(self._statements()["insert"], {"study_id": study_id, "series_id": series_id,
                                                           **plan.instance})
            row = cursor.fetchone()
        if row is None:
            raise IntegrityError(f"SOP Instance UID {plan.instance['sop_instance_uid']} indexed meanwhile")
        return row[0]

    def write_remembered(self, plan: Plan, before_commit) -> tuple[bool, int] | None:
        """The plan of a remembered ``Held`` in one statement and its own durable transaction;
        ``before_commit()`` is called (it waits for the file's fsyncs, and raises if they
        failed) before the commit.  (mpps_completed, instance id), or None when the study row
        is not what ``plan.requires`` says or the SOP Instance UID has a row (nothing written)."""
        requires = plan.requires
        pg.cursor().close()  # prepares the session outside the transaction (ris.services.pg)
        try:
            with transaction.atomic(durable=True), pg.cursor() as cursor:
                cursor.execute(self._statements()["remembered"], {
                    "study_id": requires.study_id, "study_uid": requires.study_instance_uid,
                    "status": requires.status, "modality": requires.modality, "completed": mp.COMPLETED,
                    "now": plan.now, "older_than": plan.touch_older_than, "series_id": plan.series_id,
                    **plan.instance})
                row = cursor.fetchone()
                if row is None:
                    raise _NotAsRemembered
                before_commit()
        except _NotAsRemembered:
            return None
        return bool(row[0]), row[1]


class _NotAsRemembered(Exception):
    """The remembered study row differs: the one-statement write is rolled back."""
