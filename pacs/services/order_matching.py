"""Matching a received study to its order (IHE Scheduled Workflow: AccessionNumber
(0008,0050) first, then Study Instance UID, then patient, date and modality).

In order: AccessionNumber (0008,0050) with its issuer when both sides have one; else
StudyInstanceUID (0020,000D) as assigned at order time; else PatientID (0010,0020) with
its issuer, the study date and the modality against the scheduled steps.  A match whose
demographics (name, birth date, sex) disagree with the order's patient is kept but
flagged.  What cannot be matched waits on the reconciliation page, where a person links
it to an order or to a patient with a new filler order (ORC-1 SN, encounter-based imaging).
The attributes sent on to the VNA are corrected from the order, and the correction recorded.
"""

from __future__ import annotations

import logging

from django.db import transaction
from django.utils import timezone

from pacs.models import Study, StudyLink
from pacs.models import images as im
from pacs.services import completion
from project.auditing import events
from ris import auditing, states
from ris.errors import DomainError, UnknownKey
from ris.models import Patient, PatientIdentifier, RequestedProcedure, ScheduledProcedureStep
from ris.services import orders

log = logging.getLogger("pacs.matching")


def _by_accession(study: Study) -> RequestedProcedure | None:
    if not study.accession_number:
        return None
    rp = RequestedProcedure.objects.filter(accession_number=study.accession_number).select_related("order").first()
    if rp is None:
        return None
    if study.issuer_of_accession_number and rp.accession_number_issuer and (
        study.issuer_of_accession_number != rp.accession_number_issuer
    ):
        return None  # same number from another issuer: not ours
    return rp


def _by_study_uid(study: Study) -> RequestedProcedure | None:
    return RequestedProcedure.objects.filter(study_instance_uid=study.study_instance_uid).first()


def _patients(patient_id: str, issuer: str) -> list[int]:
    identifiers = PatientIdentifier.objects.filter(id_number=patient_id)
    if issuer:
        identifiers = identifiers.filter(assigning_authority=issuer)
    return list(identifiers.values_list("patient_id", flat=True).distinct())


def _by_patient_date_modality(study: Study) -> RequestedProcedure | None:
    if not study.patient_id or study.study_date is None:
        return None
    patients = _patients(study.patient_id, study.issuer_of_patient_id)
    if len(patients) != 1:
        return None
    modalities = [m for m in study.modalities_in_study.split("\\") if m]
    steps = ScheduledProcedureStep.objects.filter(
        requested_procedure__order__patient_id=patients[0], scheduled_start__date=study.study_date
    ).exclude(status__in=[states.SPS_CANCELED])
    if modalities:
        steps = steps.filter(modality__in=modalities)
    candidates = set(steps.values_list("requested_procedure_id", flat=True))
    taken = set(
        Study.objects.filter(requested_procedure_id__in=candidates).exclude(pk=study.pk).values_list(
            "requested_procedure_id", flat=True
        )
    )
    free = candidates - taken
    if len(free) != 1:
        return None
    return RequestedProcedure.objects.get(pk=free.pop())


def find_order(study: Study) -> tuple[RequestedProcedure | None, str]:
    for finder, method in (
        (_by_accession, im.MATCH_ACCESSION),
        (_by_study_uid, im.MATCH_STUDY_UID),
        (_by_patient_date_modality, im.MATCH_PATIENT_DATE_MODALITY),
    ):
        rp = finder(study)
        if rp is not None:
            return rp, method
    return None, im.MATCH_NONE


def _name_key(value: str) -> str:
    # PN components family^given^middle^prefix^suffix; compare family and given, case-insensitively.
    parts = (value or "").upper().split("=")[0].split("^")
    return "^".join(p.strip() for p in parts[:2]).rstrip("^")


def demographics_mismatch(study: Study, patient: Patient) -> list[dict]:
    """Fields where the images disagree with the order's patient (both sides non-empty)."""
    out = []
    if study.patient_name and patient.patient_name and _name_key(study.patient_name) != _name_key(patient.patient_name):
        out.append({"keyword": "PatientName", "received": study.patient_name, "order": patient.patient_name})
    order_birth = patient.patient_birth_date.strftime("%Y%m%d") if patient.patient_birth_date else ""
    if study.patient_birth_date and order_birth and study.patient_birth_date != order_birth:
        out.append({"keyword": "PatientBirthDate", "received": study.patient_birth_date, "order": order_birth})
    if study.patient_sex and patient.patient_sex and study.patient_sex.upper() != patient.patient_sex.upper():
        out.append({"keyword": "PatientSex", "received": study.patient_sex, "order": patient.patient_sex})
    return out


def corrections_for(study: Study, rp: RequestedProcedure) -> dict[str, list[str]]:
    """What to rewrite on the way to the VNA: {keyword: [received, from the order]}.

    The patient attributes are the patient's as the engine holds them now (Patient Module,
    PS3.3 C.7.1.1): after an A08 its new demographics, after an A40 the survivor's identifier
    (an identifier retired into the patient by the merge is never sent)."""
    patient = rp.order.patient
    identifier = (
        patient.current_identifiers().filter(id_number=study.patient_id).first() or patient.primary_identifier
    )
    wanted = {
        "PatientID": identifier.id_number if identifier else "",
        "IssuerOfPatientID": identifier.assigning_authority if identifier else "",
        "PatientName": patient.patient_name,
        "PatientBirthDate": patient.patient_birth_date.strftime("%Y%m%d") if patient.patient_birth_date else "",
        "PatientSex": patient.patient_sex,
        "AccessionNumber": rp.accession_number,
    }
    received = {
        "PatientID": study.patient_id,
        "IssuerOfPatientID": study.issuer_of_patient_id,
        "PatientName": study.patient_name,
        "PatientBirthDate": study.patient_birth_date,
        "PatientSex": study.patient_sex,
        "AccessionNumber": study.accession_number,
    }
    return {k: [received[k], v] for k, v in wanted.items() if v and v != received[k]}


def _apply(study: Study, rp: RequestedProcedure, method: str) -> None:
    study.requested_procedure = rp
    study.match_method = method
    study.demographics_mismatch = demographics_mismatch(study, rp.order.patient)
    study.corrections = corrections_for(study, rp)
    study.save(update_fields=["requested_procedure", "match_method", "demographics_mismatch", "corrections",
                              "updated_at"])
    if study.demographics_mismatch:
        log.warning("study matched with mismatched demographics",
                    extra={"study_id": study.pk, "fields": [m["keyword"] for m in study.demographics_mismatch]})


def match_study(study: Study) -> bool:
    """Try to match an unmatched study (inside the caller's transaction).  True if matched."""
    if study.requested_procedure_id is not None:
        return True
    rp, method = find_order(study)
    if rp is None:
        return False
    _apply(study, rp, method)
    return True


class ReconciliationError(DomainError):
    pass


def _locked_study(study_id: int) -> Study:
    try:
        return Study.objects.select_for_update().get(pk=study_id)
    except Study.DoesNotExist:
        raise UnknownKey(f"study {study_id} does not exist") from None


def link_study(study_id: int, requested_procedure_id: int, *, actor: str, note: str = "") -> StudyLink:
    """A person links a study to an existing order (reconciliation page)."""
    with transaction.atomic():
        study = _locked_study(study_id)
        try:
            rp = RequestedProcedure.objects.select_related("order__patient").get(pk=requested_procedure_id)
        except RequestedProcedure.DoesNotExist:
            raise UnknownKey(f"requested procedure {requested_procedure_id} does not exist") from None
        if study.status != im.RECEIVING and study.requested_procedure_id not in (None, rp.pk):
            raise ReconciliationError("a completed study cannot be moved to another order")
        _apply(study, rp, im.MATCH_MANUAL)
        link = StudyLink.objects.create(study=study, requested_procedure=rp, corrections=study.corrections,
                                        actor=actor, note=note[:255])
        _audit_link(link, study, rp, events.UPDATE, actor)
        completion.check_study(study.pk, cause=f"linked by {actor}")
    return link


def _audit_link(link: StudyLink, study: Study, rp: RequestedProcedure, action: str, actor: str) -> None:
    """Order Record (PS3.15 A.5.3.13), in the link's transaction: C when the order was created for
    the study, U when the study joined an existing order; the order's patient and the study's
    own PatientID are both named, with the corrections the link applied."""
    auditing.change(events.ORDER_RECORD, action,
                    patients=auditing.patient_ids(rp.order.patient_id) + auditing.patients_of(study),
                    objects=auditing.order_objects(rp.order, [rp.accession_number])
                    + [{"type": "study", "id": study.study_instance_uid}],
                    detail={"link": link.pk, "corrections": link.corrections}, actor=actor)


def link_study_to_new_order(study_id: int, patient_pk: int, *, actor: str, description: str = "",
                            note: str = "") -> StudyLink:
    """Encounter-based imaging: a new filler order (ORC-1 SN, created_by_filler) for the patient,
    with one requested procedure carrying the study's own Study Instance UID
    (``ris.services.orders.create_filler_order``: the order placer is told of it)."""
    with transaction.atomic():
        study = _locked_study(study_id)
        if study.requested_procedure_id is not None:
            raise ReconciliationError("the study is already linked to an order")
        try:
            patient = Patient.objects.get(pk=patient_pk)
        except Patient.DoesNotExist:
            raise UnknownKey(f"patient {patient_pk} does not exist") from None
        modality = (study.modalities_in_study.split("\\") or ["OT"])[0] or "OT"
        rp = orders.create_filler_order(patient, study_instance_uid=study.study_instance_uid,
                                        description=description or study.study_description, modality=modality,
                                        performed_at=study.first_received_at or timezone.now())
        _apply(study, rp, im.MATCH_NEW_ORDER)
        link = StudyLink.objects.create(study=study, requested_procedure=rp, created_order=True,
                                        corrections=study.corrections, actor=actor, note=note[:255])
        _audit_link(link, study, rp, events.CREATE, actor)
        completion.check_study(study.pk, cause=f"new order by {actor}")
    return link
