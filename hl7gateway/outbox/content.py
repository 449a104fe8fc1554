"""From the database to the plain values of an outbound message: a signed ``ris.ReportVersion``
to its ORU^R01 (``hl7gateway.oru`` renders them; HL7 v2.5.1 chapter 7.3.1), a requested procedure
to its order status message (``hl7gateway.order_status``; IHE RAD-3) and to its charges
(``hl7gateway.charges``; DFT^P03, IHE RAD-35), a patient after an A08 / A40 to the ADT
forwarded to an archive (``hl7gateway.patient_updates``; IHE RAD-12)."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.utils import timezone

from hl7gateway import charges, order_status, oru, patient_updates
from project import links
from ris.models import PatientMerge, ReportVersion


def report_text_lines(version) -> list[str]:
    """The report as text lines: findings, impression, every addendum up to this version,
    the critical-result communication.  The OBX lines carry exactly these."""
    lines: list[str] = []

    def section(title: str, text: str) -> None:
        body = oru.split_lines(text)
        if not body:
            return
        if lines:
            lines.append("")
        lines.append(title)
        lines.extend(body)

    section("FINDINGS:", version.findings)
    section("IMPRESSION:", version.impression)
    addenda = version.report.versions.filter(
        kind="ADDENDUM", signed_at__isnull=False, version_number__lte=version.version_number
    ).order_by("version_number")
    for number, add in enumerate(addenda, start=1):
        who = oru.Person.from_dicom_pn(add.signer_name)
        name = " ".join(p for p in (who.given, who.family) if p) or add.signer_name
        when = timezone.localtime(add.signed_at).strftime("%Y-%m-%d %H:%M")
        section(f"ADDENDUM {number} ({when}, {name}):", add.addendum)
    for critical in [version] if version.critical_result else []:
        when = timezone.localtime(critical.critical_communicated_at).strftime("%Y-%m-%d %H:%M") \
            if critical.critical_communicated_at else ""
        section("CRITICAL RESULT:", f"Communicated to {critical.critical_communicated_to} {when}".rstrip())
    return lines


def _steps(rp) -> list:
    """The procedure's scheduled steps in the order they were created, read once per message."""
    return list(rp.steps.order_by("pk"))


def _observation_datetime(steps) -> datetime | None:
    """OBR-7: when the exam was done -- the first performed (else scheduled) step's start."""
    performed = [s for s in steps if s.status in ("STARTED", "DEPARTED", "COMPLETED")]
    chosen = sorted(performed or steps, key=lambda s: s.scheduled_start)
    return chosen[0].scheduled_start if chosen else None


def _identifiers(patient) -> tuple[oru.PatientIdentifier, ...]:
    return tuple(oru.PatientIdentifier(i.id_number, i.assigning_authority, i.identifier_type_code)
                 for i in patient.identifiers.order_by("pk"))


def _patient_and_visit(order) -> dict:
    """The PID and PV1 values (HL7 v2.5.1 3.4.2, 3.4.3) of an order's patient and visit, read once:
    PV1-8 is the visit's referring physician, else the order's."""
    patient, visit = order.patient, order.visit
    return {
        "patient_identifiers": _identifiers(patient),
        "patient_name": oru.Person.from_dicom_pn(patient.patient_name),
        "patient_birth_date": patient.patient_birth_date,
        "patient_sex": patient.patient_sex,
        "visit_number": visit.visit_number if visit else "",
        "patient_class": visit.patient_class if visit else "",
        "assigned_location": visit.assigned_location if visit else "",
        "referring_physician": oru.Person.from_dicom_pn(
            (visit.referring_physician_name if visit else "") or order.referring_physician_name
        ),
    }


def study_links(rp, patient_identifiers) -> tuple[str, str]:
    """The viewer URL (``VIEWER_URL_TEMPLATE``) and the WADO-RS study URL (``WADO_RS_BASE_URL``)
    of the procedure's study, "" where not configured (``project.links``); with
    DICOMWEB_ORU_SIGNED_LINKS the WADO-RS URL carries a signed study grant (``access_token``)."""
    patient_id = patient_identifiers[0].id_number if patient_identifiers else ""
    viewer = links.viewer_url(settings.VIEWER_URL_TEMPLATE, study_instance_uid=rp.study_instance_uid,
                              accession_number=rp.accession_number, patient_id=patient_id)
    if settings.DICOMWEB_ORU_SIGNED_LINKS:
        # The link grants its study for DICOMWEB_LINK_MAX_AGE_MINUTES (``pacs.dicomweb.access``).
        return viewer, links.signed_study_link(settings.WADO_RS_BASE_URL, rp.study_instance_uid)
    return viewer, links.wado_rs_study_url(settings.WADO_RS_BASE_URL, rp.study_instance_uid)


def content_for_report_version(version) -> oru.OruContent:
    """The plain-value content of the ORU^R01 for one signed ``ris.ReportVersion``."""
    rp = version.report.requested_procedure
    order = rp.order
    pid_pv1 = _patient_and_visit(order)
    steps = _steps(rp)
    signer_id = version.signed_by.get_username() if version.signed_by_id else ""
    viewer, wado = study_links(rp, pid_pv1["patient_identifiers"])
    return oru.OruContent(
        **pid_pv1,
        placer_order_number=order.placer_order_number,
        placer_namespace=order.placer_namespace,
        # ORC-3 / OBR-3: our filler number; an order without one is identified by its accession.
        filler_order_number=order.filler_order_number or rp.accession_number,
        filler_namespace=settings.HL7_RECEIVING_APPLICATION,
        procedure_code_value=rp.procedure_code_value,
        procedure_code_meaning=rp.procedure_code_meaning or rp.requested_procedure_description,
        procedure_code_scheme=rp.procedure_code_scheme,
        observation_datetime=_observation_datetime(steps),
        ordering_provider=oru.Person.from_dicom_pn(order.ordering_provider),
        accession_number=rp.accession_number,
        requested_procedure_id=rp.requested_procedure_id,
        result_status=version.result_status,
        signer=oru.Person.from_dicom_pn(version.signer_name, id_number=signer_id),
        signed_at=version.signed_at,
        text_lines=tuple(report_text_lines(version)),
        study_instance_uid=rp.study_instance_uid,
        viewer_url=viewer,
        wado_rs_url=wado,
    )


def content_for_status(rp, event: str, at: datetime) -> order_status.StatusContent:
    """The plain-value content of the order status message ``event`` causes for one
    ``ris.RequestedProcedure`` (IHE RAD-3), or of its new filler order (``FILLER_ORDER``, ORC-1
    SN); ``at`` is the time of the change (ORC-9)."""
    order = rp.order
    pid_pv1 = _patient_and_visit(order)
    steps = _steps(rp)
    control = order_status.order_control(event)
    return order_status.StatusContent(
        **pid_pv1,
        order_control=control,
        # SN: the new order's own status; SC: the status the change moved it to.
        order_status=(order_status.filler_order_status(rp.status) if control == "SN"
                      else order_status.ORDER_STATUS[event]),
        transaction_at=at,
        result_status=order_status.RESULT_STATUS.get(event, ""),
        placer_order_number=order.placer_order_number,
        placer_namespace=order.placer_namespace,
        # As in the ORU^R01: our filler number, else the accession number identifies the order.
        filler_order_number=order.filler_order_number or rp.accession_number,
        filler_namespace=settings.HL7_RECEIVING_APPLICATION,
        procedure_code_value=rp.procedure_code_value,
        procedure_code_meaning=rp.procedure_code_meaning or rp.requested_procedure_description,
        procedure_code_scheme=rp.procedure_code_scheme,
        observation_datetime=_observation_datetime(steps),
        ordering_provider=oru.Person.from_dicom_pn(order.ordering_provider),
        accession_number=rp.accession_number,
        requested_procedure_id=rp.requested_procedure_id,
        study_instance_uid=rp.study_instance_uid,
        steps=tuple(order_status.StepValues(s.scheduled_procedure_step_id, s.modality, s.scheduled_station_ae_title)
                    for s in steps),
    )


def _final_signature(rp):
    """The first final (or corrected) signed version of the procedure's report: its signer read it."""
    return (ReportVersion.objects.filter(report__requested_procedure=rp, signed_at__isnull=False,
                                         result_status__in=("F", "C"))
            .select_related("signed_by").order_by("version_number").first())


def content_for_charge(rp, kind: str, transaction_type: str, posted_at: datetime) -> charges.ChargeContent:
    """The plain-value content of one DFT^P03 for one ``ris.RequestedProcedure`` (IHE RAD-35).

    FT1-4 is the date of the service charged -- the exam's start for the technical charge, the
    final signature for the professional one -- so that the credit (FT1-6 CD) carries the same
    date as the charge it reverses.  FT1-20 "performed by" is the performing physician of the
    exam where the order named one (technical), the radiologist who signed the final report
    (professional)."""
    order = rp.order
    pid_pv1 = _patient_and_visit(order)
    if kind == charges.TECHNICAL:
        steps = _steps(rp)
        step = next((s for s in steps if s.scheduled_performing_physician_name), None)
        performed_by = oru.Person.from_dicom_pn(step.scheduled_performing_physician_name if step else "")
        service_at = _observation_datetime(steps)
    else:
        final = _final_signature(rp)
        signer_id = final.signed_by.get_username() if final and final.signed_by_id else ""
        performed_by = oru.Person.from_dicom_pn(final.signer_name if final else "", id_number=signer_id)
        service_at = final.signed_at if final else None
    return charges.ChargeContent(
        **pid_pv1,
        charge_kind=kind,
        transaction_type=transaction_type,
        transaction_id=charges.transaction_id(rp.pk, kind),
        transaction_at=service_at or posted_at,
        posted_at=posted_at,
        procedure_code_value=rp.procedure_code_value,
        procedure_code_meaning=rp.procedure_code_meaning or rp.requested_procedure_description,
        procedure_code_scheme=rp.procedure_code_scheme,
        quantity=1,  # one requested procedure is one exam (FT1-10)
        performed_by=performed_by,
        ordering_provider=oru.Person.from_dicom_pn(order.ordering_provider),
        filler_order_number=order.filler_order_number or rp.accession_number,
        filler_namespace=settings.HL7_RECEIVING_APPLICATION,
    )


def content_for_patient_update(patient, event: str, merge_id: int | None,
                               recorded_at: datetime) -> patient_updates.PatientUpdateContent:
    """The plain-value content of the ADT^A08 / ADT^A40 forwarded to an archive: the patient as the
    engine holds it now (current identifiers: none retired into it by a merge), and for a merge
    the identifier it retired (``ris.PatientMerge``, MRG-1)."""
    retired = None
    if event == patient_updates.A40 and merge_id is not None:
        merge = PatientMerge.objects.get(pk=merge_id)
        retired = oru.PatientIdentifier(merge.retired_patient_id, merge.retired_issuer_of_patient_id)
    return patient_updates.PatientUpdateContent(
        event=event,
        patient_identifiers=tuple(oru.PatientIdentifier(i.id_number, i.assigning_authority, i.identifier_type_code)
                                  for i in patient.current_identifiers()),
        patient_name=oru.Person.from_dicom_pn(patient.patient_name),
        patient_birth_date=patient.patient_birth_date,
        patient_sex=patient.patient_sex,
        recorded_at=recorded_at,
        retired_identifier=retired,
    )


def message_control_id(pk: int, prefix: str = "ORU") -> str:
    """MSH-10 (ST, at most 20 characters): fixed when the row is created, reused on every resend;
    ``ORU`` for results, ``OSC`` for order status, ``OSN`` for filler orders (ORC-1 SN), ``DFT`` for
    charges, ``ADT`` for patient updates to the archive (the prefix only helps the operator read it)."""
    return f"{prefix}{pk:012d}"
