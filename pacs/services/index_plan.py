"""What indexing one received instance writes, decided once (PS3.3 C.7: patient, study, series,
instance; PS3.4 B.4.1.3 for a SOP Instance UID stored already).

``plan_instance`` is a plain function: the instance's attributes (``InstanceAttributes``, read
from its header) and what the database holds for it (``Held``, read by
``pacs.services.index_db.read`` inside the transaction that writes) give a ``Plan``: the rows to
insert or update, whether the study is re-opened or matched to its order, or the error to
answer.  The writers (``pacs.services.index_db``: the ORM one, PostgreSQL's) write a plan as it
is and decide nothing.

The rules:

- a SOP Instance UID that has an index row is a resend (``AlreadyStored``): nothing is written
  here, ``pacs.services.resends`` decides what happens to it (PS3.4 B.4.1.3, PS3.3 C.12.1.1.1);
- a Series Instance UID stored under another study is refused (``InstanceConflict``): a series
  belongs to one study (PS3.3 7.1, the DICOM model of the real world);
- a new study row keeps the patient and study attributes of its first instance and is matched
  to its order (IHE Scheduled Workflow: by AccessionNumber (0008,0050), else as
  ``pacs.services.order_matching`` says);
- ModalitiesInStudy (0008,0061) gains the instance's Modality (0008,0060) when it is new;
- a study no longer receiving (complete, archived) is re-opened by a late instance;
- ``last_received_at`` (the start of the quiet period after which a study completes) moves
  when it is older than ``TOUCH_EVERY``: every update of the study row rewrites all its index
  entries, and the quiet period is counted in tens of seconds.

A ``Held`` may also be remembered rather than read (``Held.remembered``: this process indexed an
instance of the series before, in a study that was receiving): the plan then states what it
assumed (``Plan.requires``) and a writer that writes it checks that in the same statement, and
writes nothing when the database differs (the caller reads and plans again).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pacs.models import images as im

# How stale Study.last_received_at may get while a study is receiving (the quiet-period
# completion waits STUDY_QUIET_PERIOD_SECONDS, 60 s by default, after it).
TOUCH_EVERY = dt.timedelta(seconds=1)


class InstanceConflict(ValueError):
    """The Series Instance UID is already stored under another study."""


class AlreadyStored(Exception):
    """The SOP Instance UID has an index row: nothing was written (``pacs.services.resends`` decides)."""


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
    body_part_examined: str = ""
    instance_number: int | None = None
    calling_ae_title: str = ""
    dataset_sha256: str = ""  # of the data set as received, when known (a resend: pacs.services.resends)


@dataclass(frozen=True)
class StudyHeld:
    id: int
    status: str
    modalities_in_study: str
    last_received_at: dt.datetime | None  # None: not known (remembered)
    mpps_completed: bool  # a COMPLETED MPPS names the study (PS3.4 Annex F)


@dataclass(frozen=True)
class SeriesHeld:
    id: int
    study_id: int


@dataclass(frozen=True)
class Held:
    """What the database holds for an instance: its study (by Study Instance UID), its series
    (by Series Instance UID, in whatever study), and the id of an index row of its SOP
    Instance UID."""

    study: StudyHeld | None
    series: SeriesHeld | None
    instance_id: int | None = None
    remembered: bool = False


@dataclass(frozen=True)
class Requires:
    """What a plan made from a remembered ``Held`` assumed of the study row: its id and Study
    Instance UID, status RECEIVING, ``modality`` listed in ModalitiesInStudy (or empty)."""

    study_id: int
    study_instance_uid: str
    status: str
    modality: str


@dataclass(frozen=True)
class Plan:
    study_id: int | None  # None: ``new_study`` is inserted
    series_id: int | None  # None: ``new_series`` is inserted
    instance: dict  # the Instance row's own columns (its study and series ids added by the writer)
    new_study: dict | None = None
    new_series: dict | None = None
    study_changes: dict | None = None  # columns of the existing study row to update
    touch_older_than: dt.datetime | None = None  # remembered: last_received_at moves if older than this
    now: dt.datetime | None = None
    reopen_cause: str = ""  # the study is moved back to RECEIVING with this cause
    match_order: bool = False  # a new study: matched to its order (pacs.services.order_matching)
    mpps_completed: bool = False  # as read; a matched new study is checked after its match
    requires: Requires | None = None
    instance_id: int | None = None  # a replacement: this row is updated with ``instance``


def study_attributes(attrs: InstanceAttributes) -> dict:
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


def new_study_row(attrs: InstanceAttributes, now: dt.datetime) -> dict:
    return {
        "study_instance_uid": attrs.study_instance_uid,
        **study_attributes(attrs),
        "modalities_in_study": attrs.modality[:16],
        "calling_ae_title": attrs.calling_ae_title[:16],
        "last_received_at": now,
    }


def new_series_row(attrs: InstanceAttributes) -> dict:
    """Series attributes keep the values of the series' first instance."""
    return {
        "series_instance_uid": attrs.series_instance_uid,
        "modality": attrs.modality[:16],
        "series_number": attrs.series_number,
        "series_description": attrs.series_description[:64],
        "body_part_examined": attrs.body_part_examined[:16].upper(),
    }


def instance_row(attrs: InstanceAttributes, relative: str, size: int, now: dt.datetime) -> dict:
    return {
        "sop_instance_uid": attrs.sop_instance_uid,
        "sop_class_uid": attrs.sop_class_uid,
        "transfer_syntax_uid": attrs.transfer_syntax_uid,
        "instance_number": attrs.instance_number,
        "path": relative,
        "size": size,
        "received_at": now,
        "dataset_sha256": attrs.dataset_sha256,
    }


def modalities_with(modalities_in_study: str, modality: str) -> str | None:
    """ModalitiesInStudy (0008,0061) with ``modality`` added; None when it is listed already."""
    modalities = [m for m in modalities_in_study.split("\\") if m]
    if not modality or modality in modalities:
        return None
    return "\\".join([*modalities, modality])[:64]


def plan_instance(attrs: InstanceAttributes, held: Held, *, relative: str, size: int,
                  now: dt.datetime) -> Plan:
    """The plan for a new instance (module docstring); raises ``AlreadyStored`` or
    ``InstanceConflict`` when nothing is to be written."""
    if held.instance_id is not None:
        raise AlreadyStored(attrs.sop_instance_uid)
    study, series = held.study, held.series
    if series is not None and (study is None or series.study_id != study.id):
        raise InstanceConflict(f"Series {attrs.series_instance_uid} belongs to another study")
    instance = instance_row(attrs, relative, size, now)
    new_series = None if series is not None else new_series_row(attrs)
    series_id = None if series is None else series.id
    if study is None:
        return Plan(study_id=None, series_id=series_id, instance=instance, new_study=new_study_row(attrs, now),
                    new_series=new_series, now=now, match_order=True)
    if held.remembered:
        return Plan(study_id=study.id, series_id=series_id, instance=instance, new_series=new_series, now=now,
                    touch_older_than=now - TOUCH_EVERY, mpps_completed=study.mpps_completed,
                    requires=Requires(study.id, attrs.study_instance_uid, im.RECEIVING, attrs.modality))
    changes = {}
    if study.last_received_at is None or study.last_received_at < now - TOUCH_EVERY:
        changes["last_received_at"] = now
    if (listed := modalities_with(study.modalities_in_study, attrs.modality)) is not None:
        changes["modalities_in_study"] = listed
    if changes:
        changes["updated_at"] = now
    reopen = f"late instance {attrs.sop_instance_uid}" if study.status != im.RECEIVING else ""
    return Plan(study_id=study.id, series_id=series_id, instance=instance, new_series=new_series,
                study_changes=changes or None, now=now, reopen_cause=reopen, mpps_completed=study.mpps_completed)


def plan_replacement(attrs: InstanceAttributes, held: Held, *, instance_id: int, relative: str, size: int,
                     now: dt.datetime) -> Plan:
    """STORE_OVERWRITE_POLICY=replace (``pacs.services.resends``): the index row ``instance_id``
    takes the new version (study and series linkage, file, digest; not sent yet), the study
    takes its patient and study attributes and is re-opened when no longer receiving (the next
    completion sends the new version, as a late instance); a study created by the move is
    matched to its order.  Raises ``InstanceConflict`` as ``plan_instance`` does."""
    study, series = held.study, held.series
    if series is not None and (study is None or series.study_id != study.id):
        raise InstanceConflict(f"Series {attrs.series_instance_uid} belongs to another study")
    instance = {**instance_row(attrs, relative, size, now), "batch": None}
    del instance["sop_instance_uid"]
    new_series = None if series is not None else new_series_row(attrs)
    series_id = None if series is None else series.id
    if study is None:
        return Plan(study_id=None, series_id=series_id, instance=instance, instance_id=instance_id,
                    new_study=new_study_row(attrs, now), new_series=new_series, now=now, match_order=True)
    changes = {**study_attributes(attrs), "last_received_at": now, "updated_at": now}
    if (listed := modalities_with(study.modalities_in_study, attrs.modality)) is not None:
        changes["modalities_in_study"] = listed
    reopen = f"replaced instance {attrs.sop_instance_uid}" if study.status != im.RECEIVING else ""
    return Plan(study_id=study.id, series_id=series_id, instance=instance, instance_id=instance_id,
                new_series=new_series, study_changes=changes, now=now, reopen_cause=reopen,
                mpps_completed=study.mpps_completed)


def remembered(attrs: InstanceAttributes, known: tuple[int, int] | None) -> Held | None:
    """``Held`` from what this process remembers of the series (study id, series id) after it
    indexed one of its instances: a receiving study that lists the instance's modality and no
    row for its SOP Instance UID, all to be checked by the writer (``Plan.requires``)."""
    if known is None:
        return None
    study_id, series_id = known
    return Held(
        study=StudyHeld(study_id, im.RECEIVING, attrs.modality, None, False),
        series=SeriesHeld(series_id, study_id), instance_id=None, remembered=True,
    )
