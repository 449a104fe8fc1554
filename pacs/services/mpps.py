"""Modality Performed Procedure Step: what the modality says it did (PS3.4 Annex F, IHE RAD-6/7).

``create`` (N-CREATE) records an MPPS IN PROGRESS and moves the scheduled steps it names
to STARTED; ``update`` (N-SET) merges the modification list and, on COMPLETED or
DISCONTINUED, moves the steps there too.  Every change happens in one transaction and
after every check: a refused request changes nothing.  Statuses change only through
``ris.services.transitions.transition``.

Both take plain values: the SOP Instance UID, the attributes in DICOM JSON (PS3.18 F.2)
and the calling AE title.  Refusals raise ``MppsRefused`` carrying the DIMSE status
(PS3.4 F.7.2.1.2 / F.7.2.2.2, PS3.7 C):

0x0106 invalid attribute value   0x0110 processing failure (0xA710: may no longer be updated)
0x0111 duplicate SOP instance    0x0112 no such SOP instance   0x0120 missing attribute
"""

from __future__ import annotations

import logging
import zoneinfo
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from pydicom.dataset import Dataset

from pacs import auditing
from pacs.lib.dicom_values import ValueError_, parse_da, parse_tm
from pacs.models.mpps import COMPLETED, DISCONTINUED, FINAL, IN_PROGRESS, PerformedInstance, PerformedProcedureStep
from pacs.signals import mpps_completed
from project.auditing import events
from project.auditing.actors import acting
from project.text import no_nul
from ris import states
from ris.errors import InvalidTransition
from ris.models import ScheduledProcedureStep
from ris.services.transitions import transition

log = logging.getLogger("pacs.services.mpps")

INVALID_ATTRIBUTE_VALUE = 0x0106
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_SOP_INSTANCE = 0x0112
MISSING_ATTRIBUTE = 0x0120
MAY_NO_LONGER_BE_UPDATED = 0xA710  # Error ID with 0x0110 (PS3.4 F.7.2.2.2)

# Attributes whose N-SET usage is "Not allowed" in PS3.4 Table F.7.2-1: set at N-CREATE only.
NOT_ALLOWED_IN_N_SET = frozenset(
    {
        "ScheduledStepAttributesSequence",
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "IssuerOfPatientIDQualifiersSequence",
        "PatientBirthDate",
        "PatientSex",
        "ReferencedPatientSequence",
        "AdmissionID",
        "IssuerOfAdmissionIDSequence",
        "PerformedProcedureStepID",
        "PerformedStationAETitle",
        "PerformedStationName",
        "PerformedLocation",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "Modality",
        "StudyID",
    }
)

# ScheduledStepAttributesSequence (0040,0270) as a DICOM JSON key (PS3.18 F.2).
SCHEDULED_STEP_ATTRIBUTES = "00400270"

# MPPS status (PerformedProcedureStepStatus (0040,0252), PS3.4 F.7.2.2) -> step status
# (ScheduledProcedureStepStatus (0040,0020)): the modality reports progress only through MPPS.
STEP_STATUS = {IN_PROGRESS: states.SPS_STARTED, COMPLETED: states.SPS_COMPLETED, DISCONTINUED: states.SPS_DISCONTINUED}


class MppsRefused(Exception):
    """A refused N-CREATE / N-SET: ``status`` is the DIMSE status to answer."""

    def __init__(self, status: int, comment: str, *, offending: list[str] | None = None, error_id: int | None = None):
        super().__init__(comment)
        self.status = status
        self.comment = comment
        self.offending = offending or []
        self.error_id = error_id


def _dataset(attributes: dict) -> Dataset:
    try:
        return Dataset.from_json(attributes)
    except Exception as exc:  # noqa: BLE001 - anything unreadable
        raise MppsRefused(PROCESSING_FAILURE, f"attributes cannot be read: {exc}"[:64]) from None


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _datetime(ds: Dataset, date_keyword: str, time_keyword: str) -> datetime | None:
    date_text, time_text = _text(ds, date_keyword), _text(ds, time_keyword)
    if not date_text:
        return None
    try:
        day = parse_da(date_text)
        moment = parse_tm(time_text) if time_text else None
    except ValueError_ as exc:
        raise MppsRefused(INVALID_ATTRIBUTE_VALUE, str(exc)[:64], offending=[date_keyword, time_keyword]) from None
    tz = zoneinfo.ZoneInfo(settings.TIME_ZONE)
    return datetime.combine(day, moment or datetime.min.time(), tz)


def _referenced_steps(ds: Dataset) -> list[ScheduledProcedureStep]:
    """The steps ScheduledStepAttributesSequence (0040,0270) names, locked (IHE RAD TF-2 4.6.4.1.2.3).

    An item names a step by ScheduledProcedureStepID + RequestedProcedureID, within the
    AccessionNumber or StudyInstanceUID it carries; an item with no step ID is the
    unscheduled case and names none.
    """
    steps: list[ScheduledProcedureStep] = []
    for item in ds.get("ScheduledStepAttributesSequence") or []:
        sps_id = _text(item, "ScheduledProcedureStepID")
        if not sps_id:
            continue
        qs = ScheduledProcedureStep.objects.select_for_update().filter(scheduled_procedure_step_id=sps_id)
        rp_id = _text(item, "RequestedProcedureID")
        accession = _text(item, "AccessionNumber")
        study_uid = _text(item, "StudyInstanceUID")
        if rp_id:
            qs = qs.filter(requested_procedure__requested_procedure_id=rp_id)
        if accession:
            qs = qs.filter(requested_procedure__accession_number=accession)
        elif study_uid:
            qs = qs.filter(requested_procedure__study_instance_uid=study_uid)
        elif not rp_id:
            continue  # a bare step ID is not enough to know which order it belongs to
        found = list(qs.order_by("pk")[:2])
        if len(found) == 1 and found[0] not in steps:
            steps.append(found[0])
        elif len(found) > 1:
            log.warning("mpps names an ambiguous step", extra={"scheduled_procedure_step_id": sps_id})
    return steps


def _performed_instances(ds: Dataset) -> list[tuple[str, str, str]]:
    """(series, SOP class, SOP instance) from PerformedSeriesSequence (PS3.3 C.4.15)."""
    out = []
    for series in ds.get("PerformedSeriesSequence") or []:
        series_uid = _text(series, "SeriesInstanceUID")
        for keyword in ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence"):
            for ref in series.get(keyword) or []:
                sop_uid = _text(ref, "ReferencedSOPInstanceUID")
                if sop_uid:
                    out.append((series_uid, _text(ref, "ReferencedSOPClassUID"), sop_uid))
    return out


def _replace_instances(pps: PerformedProcedureStep, instances: list[tuple[str, str, str]]) -> None:
    pps.performed_instances.all().delete()
    seen = set()
    rows = []
    for series_uid, sop_class_uid, sop_uid in instances:
        if sop_uid in seen:
            continue
        seen.add(sop_uid)
        rows.append(PerformedInstance(performed_procedure_step=pps, series_instance_uid=series_uid,
                                      sop_class_uid=sop_class_uid, sop_instance_uid=sop_uid))
    PerformedInstance.objects.bulk_create(rows)


def _move_steps(steps, mpps_status: str, *, cause: str, actor: str) -> None:
    """Move each step to the status the MPPS status means; a step that cannot move (e.g.
    canceled meanwhile) keeps its status and is logged for reconciliation."""
    target = STEP_STATUS[mpps_status]
    for step in steps:
        try:
            transition(step, target, entity="sps", cause=cause, actor=actor)
        except InvalidTransition:
            log.warning("mpps could not move its step", extra={"step": step.pk, "from": step.status, "to": target})
            continue
        _summarize_procedure(step, cause=cause, actor=actor)


def _summarize_procedure(step: ScheduledProcedureStep, *, cause: str, actor: str) -> None:
    """The requested procedure's own status follows its steps: IN_PROGRESS once one has
    started; COMPLETED (or DISCONTINUED) when every step is final."""
    rp = type(step.requested_procedure).objects.select_for_update().get(pk=step.requested_procedure_id)
    statuses = set(rp.steps.values_list("status", flat=True))
    if statuses <= states.SPS_FINAL:
        target = states.RP_COMPLETED if states.SPS_COMPLETED in statuses else (
            states.RP_DISCONTINUED if states.SPS_DISCONTINUED in statuses else states.RP_CANCELED)
    elif states.SPS_STARTED in statuses or states.SPS_COMPLETED in statuses:
        target = states.RP_IN_PROGRESS
    else:
        return
    if (rp.status, target) in states.TABLES["requested_procedure"]:
        transition(rp, target, entity="requested_procedure", cause=cause, actor=actor)


def _acting(calling_ae_title: str, source_address: str):
    """The modality as the actor of the step and procedure changes an MPPS causes (PS3.15 A.5.2:
    UserID = the calling AE title, a DICOM node at its address)."""
    return acting(calling_ae_title or "(no AE title)", events.DICOM, source_address=source_address)


def create(sop_instance_uid: str, attributes: dict, *, calling_ae_title: str = "",
           source_address: str = "") -> PerformedProcedureStep:
    """N-CREATE (PS3.4 F.7.2.1): record the MPPS IN PROGRESS, move its steps to STARTED."""
    uid = no_nul((sop_instance_uid or "").strip().rstrip("\x00"))
    if not uid:
        raise MppsRefused(MISSING_ATTRIBUTE, "Affected SOP Instance UID is required")
    attributes = no_nul(attributes)  # stored as jsonb (project.text)
    ds = _dataset(attributes)
    status = _text(ds, "PerformedProcedureStepStatus")
    if not status:
        raise MppsRefused(MISSING_ATTRIBUTE, "PerformedProcedureStepStatus is required",
                          offending=["PerformedProcedureStepStatus"])
    if status != IN_PROGRESS:
        raise MppsRefused(INVALID_ATTRIBUTE_VALUE, "N-CREATE status must be IN PROGRESS",
                          offending=["PerformedProcedureStepStatus"])
    started_at = _datetime(ds, "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime")
    cause = f"MPPS N-CREATE {uid}"[:255]
    with transaction.atomic(), _acting(calling_ae_title, source_address):
        if PerformedProcedureStep.objects.filter(sop_instance_uid=uid).exists():
            raise MppsRefused(DUPLICATE_SOP_INSTANCE, "MPPS SOP Instance already exists")
        steps = _referenced_steps(ds)
        first_item = (ds.get("ScheduledStepAttributesSequence") or [Dataset()])[0]
        pps = PerformedProcedureStep.objects.create(
            sop_instance_uid=uid,
            status=IN_PROGRESS,
            scheduled_step=steps[0] if steps else None,
            study_instance_uid=_text(first_item, "StudyInstanceUID")[:64],
            accession_number=_text(first_item, "AccessionNumber")[:16],
            patient_id=_text(ds, "PatientID")[:64],
            patient_name=_text(ds, "PatientName")[:320],
            modality=_text(ds, "Modality")[:16],
            performed_procedure_step_id=_text(ds, "PerformedProcedureStepID")[:16],
            performed_station_ae_title=_text(ds, "PerformedStationAETitle")[:16],
            performed_procedure_step_description=_text(ds, "PerformedProcedureStepDescription")[:64],
            calling_ae_title=calling_ae_title[:16],
            started_at=started_at or timezone.now(),
            attributes=attributes,
        )
        _replace_instances(pps, _performed_instances(ds))
        _move_steps(steps, IN_PROGRESS, cause=cause, actor=calling_ae_title)
        auditing.procedure_step(pps, events.CREATE, calling_ae_title=calling_ae_title, source_address=source_address)
    if not steps:
        log.info("unscheduled mpps kept for reconciliation", extra={"mpps": pps.pk, "calling_ae_title": calling_ae_title})
    return pps


def update(sop_instance_uid: str, modifications: dict, *, calling_ae_title: str = "",
           source_address: str = "") -> PerformedProcedureStep:
    """N-SET (PS3.4 F.7.2.2): merge the modification list; COMPLETED / DISCONTINUED are final."""
    uid = no_nul((sop_instance_uid or "").strip().rstrip("\x00"))
    modifications = no_nul(modifications)  # stored as jsonb (project.text)
    ds = _dataset(modifications)
    forbidden = sorted(e.keyword or str(e.tag) for e in ds if e.keyword in NOT_ALLOWED_IN_N_SET)
    if forbidden:
        raise MppsRefused(INVALID_ATTRIBUTE_VALUE, f"not allowed in N-SET: {', '.join(forbidden)}"[:64],
                          offending=forbidden)
    status = _text(ds, "PerformedProcedureStepStatus")
    if status and status not in (IN_PROGRESS, COMPLETED, DISCONTINUED):
        raise MppsRefused(INVALID_ATTRIBUTE_VALUE, f"unknown status {status!r}"[:64],
                          offending=["PerformedProcedureStepStatus"])
    ended_at = _datetime(ds, "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime")
    cause = f"MPPS N-SET {uid}"[:255]
    with transaction.atomic(), _acting(calling_ae_title, source_address):
        pps = PerformedProcedureStep.objects.select_for_update().filter(sop_instance_uid=uid).first()
        if pps is None:
            raise MppsRefused(NO_SUCH_SOP_INSTANCE, "no such MPPS SOP Instance")
        if pps.status in FINAL:
            raise MppsRefused(PROCESSING_FAILURE, "Performed Procedure Step Object may no longer be updated",
                              error_id=MAY_NO_LONGER_BE_UPDATED)
        merged = {**pps.attributes, **modifications}
        pps.attributes = merged
        if "PerformedProcedureStepDescription" in ds:
            pps.performed_procedure_step_description = _text(ds, "PerformedProcedureStepDescription")[:64]
        if ended_at:
            pps.ended_at = ended_at
        if "PerformedSeriesSequence" in ds:
            _replace_instances(pps, _performed_instances(ds))
        if status in FINAL and pps.ended_at is None:
            pps.ended_at = timezone.now()
        pps.save()
        if status and status != pps.status:
            transition(pps, status, entity="mpps", cause=cause, actor=calling_ae_title)
            # Only the N-CREATE's ScheduledStepAttributesSequence names steps (N-SET may not
            # change it, Table F.7.2-1): read that alone, not the whole PerformedSeriesSequence.
            steps = _referenced_steps(_dataset({SCHEDULED_STEP_ATTRIBUTES: merged[SCHEDULED_STEP_ATTRIBUTES]}
                                               if SCHEDULED_STEP_ATTRIBUTES in merged else {}))
            if pps.scheduled_step_id and pps.scheduled_step_id not in {s.pk for s in steps}:
                # linked by hand at reconciliation
                steps.insert(0, ScheduledProcedureStep.objects.select_for_update().get(pk=pps.scheduled_step_id))
            _move_steps(steps, status, cause=cause, actor=calling_ae_title)
            if status == COMPLETED:
                mpps_completed.send(sender=PerformedProcedureStep, performed_procedure_step=pps)
        auditing.procedure_step(pps, events.UPDATE, calling_ae_title=calling_ae_title, source_address=source_address)
    return pps
