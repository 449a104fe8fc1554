"""The scenario of the relevant-priors tests against a real VNA: a patient P7 (issuer HOSP) into
which OLD7, the identifier the VNA's studies carry, was merged (HL7 ADT^A40), studies of OLD7 put
into the VNA with dcmtk's storescu, and a new order for P7 placed through the RIS service as the
HL7 intake places it."""

from __future__ import annotations

import datetime as dt

from django.db import transaction
from django.utils import timezone
from pydicom.uid import generate_uid

from ris.commands import MergePatients, OrderCommand, PatientData, PatientIdentity, ProcedureData, StepData
from ris.services import orders
from ris.services.patients import merge_patients
from tests.factories import make_patient
from tests.support.orthanc import storescu, write_study


def years_ago(years: float) -> dt.date:
    return timezone.localdate() - dt.timedelta(days=int(365.25 * years))


def prior_in(vna, tmp_path, *, patient_id: str, modality: str, years: float, n: int = 2, **kwargs) -> str:
    """A study of ``n`` instances stored into ``vna`` (an ``OrthancProcess``) by C-STORE; its UID.
    Its files stay in ``tmp_path / uid`` (``0001.dcm``...), to send some of them elsewhere too."""
    uid = generate_uid()
    paths = write_study(tmp_path / uid, n, study_instance_uid=uid, modality=modality, patient_id=patient_id,
                        patient_name="DOE^JON", accession_number=f"OLD{uid[-6:]}", study_date=years_ago(years),
                        **kwargs)
    proc = storescu(vna.dicom_port, paths, called=vna.aet)
    assert proc.returncode == 0, proc.stderr
    return uid


def merged_patient() -> None:
    """P7 survives; OLD7 (the identifier the VNA's studies carry) is merged into it (A40)."""
    make_patient("DOE^JOHN", "P7")
    make_patient("DOE^JON", "OLD7")
    with transaction.atomic():
        merge_patients(MergePatients(survivor=PatientData(identifiers=[PatientIdentity("P7", "HOSP")]),
                                     retired=PatientIdentity("OLD7", "HOSP"), cause="HL7 ADT^A40 test"))


def new_order(modality: str = "CT") -> int:
    """A new order (ORC-1 NW) for P7 through the RIS service; its RequestedProcedure's pk."""
    cmd = OrderCommand(order_control="NW", order_status="", placer_order_number=f"PL{generate_uid()[-8:]}",
                       placer_namespace="EHR", patient=PatientData(identifiers=[PatientIdentity("P7", "HOSP")],
                                                                   patient_name="DOE^JOHN"),
                       procedures=[ProcedureData(requested_procedure_id="", steps=[
                           StepData(scheduled_procedure_step_id="", modality=modality,
                                    scheduled_start=timezone.now() + dt.timedelta(hours=1))])],
                       sending_application="EHR", cause="HL7 ORM^O01 NW test")
    with transaction.atomic():
        effect = orders.apply_order(cmd)
    return effect["procedures"][0]
