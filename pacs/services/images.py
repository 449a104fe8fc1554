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

from django.db import DatabaseError, IntegrityError, transaction
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


def store_instance(attrs: InstanceAttributes, temporary: Path) -> StoreResult:
    """Put a fsynced temporary file in its place and index it (see module docstring)."""
    relative = storage.relative_path(attrs.study_instance_uid, attrs.series_instance_uid, attrs.sop_instance_uid)
    storage.require_uid(attrs.sop_class_uid, "SOPClassUID")
    storage.require_uid(attrs.transfer_syntax_uid, "TransferSyntaxUID")
    existing = Instance.objects.filter(sop_instance_uid=attrs.sop_instance_uid).select_related("study", "series").first()
    if existing is not None and (
        existing.study.study_instance_uid != attrs.study_instance_uid
        or existing.series.series_instance_uid != attrs.series_instance_uid
    ):
        storage.discard(temporary)
        raise InstanceConflict(f"SOP Instance UID {attrs.sop_instance_uid} is already stored in another study/series")
    final, replaced = storage.commit_file(temporary, relative)
    size = final.stat().st_size
    try:
        return _index(attrs, relative, size)
    except BaseException:
        if not replaced:
            storage.discard(final)
        raise


def _index(attrs: InstanceAttributes, relative: str, size: int) -> StoreResult:
    now = timezone.now()
    for attempt in range(3):
        try:
            with transaction.atomic(durable=True):
                study, study_created = _lock_or_create_study(attrs, now)
                series = _series(study, attrs)
                instance = Instance.objects.filter(sop_instance_uid=attrs.sop_instance_uid).first()
                created = instance is None
                if created:
                    instance = Instance.objects.create(
                        study=study, series=series, sop_instance_uid=attrs.sop_instance_uid,
                        sop_class_uid=attrs.sop_class_uid, transfer_syntax_uid=attrs.transfer_syntax_uid,
                        instance_number=attrs.instance_number, path=relative, size=size, received_at=now,
                    )
                else:
                    instance.sop_class_uid = attrs.sop_class_uid
                    instance.transfer_syntax_uid = attrs.transfer_syntax_uid
                    instance.size = size
                    instance.received_at = now
                    instance.save(update_fields=["sop_class_uid", "transfer_syntax_uid", "size", "received_at"])
                reopened = False
                if created and study.status != im.RECEIVING:
                    transition(
                        study, im.RECEIVING, entity="study", cause=f"late instance {attrs.sop_instance_uid}",
                        actor=attrs.calling_ae_title or "C-STORE",
                    )
                    reopened = True
                study.last_received_at = now
                modalities = [m for m in study.modalities_in_study.split("\\") if m]
                if attrs.modality and attrs.modality not in modalities:
                    modalities.append(attrs.modality)
                study.modalities_in_study = "\\".join(modalities)[:64]
                study.save(update_fields=["last_received_at", "modalities_in_study", "updated_at"])
                if study_created:
                    from pacs.services import order_matching

                    order_matching.match_study(study)
            return StoreResult(instance.pk, study.pk, created, reopened)
        except IntegrityError:
            # Two associations created the same study/series/instance at once: the loser retries.
            if attempt == 2:
                raise
    raise DatabaseError("unreachable")


def _lock_or_create_study(attrs: InstanceAttributes, now) -> tuple[Study, bool]:
    study = Study.objects.select_for_update().filter(study_instance_uid=attrs.study_instance_uid).first()
    if study is not None:
        return study, False
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
            calling_ae_title=attrs.calling_ae_title[:16],
            last_received_at=now,
        )
    return Study.objects.select_for_update().get(pk=study.pk), True


def _series(study: Study, attrs: InstanceAttributes) -> Series:
    series = Series.objects.filter(series_instance_uid=attrs.series_instance_uid).first()
    if series is None:
        with transaction.atomic():
            series = Series.objects.create(
                study=study, series_instance_uid=attrs.series_instance_uid, modality=attrs.modality[:16],
                series_number=attrs.series_number, series_description=attrs.series_description[:64],
            )
    elif series.study_id != study.pk:
        raise InstanceConflict(f"Series {attrs.series_instance_uid} belongs to another study")
    return series
