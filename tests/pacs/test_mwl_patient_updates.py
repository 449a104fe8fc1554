"""Patient updates reach the worklist: after A08 the next query shows the new name; after
A40 the retired patient's steps answer under the surviving ID (through ris.services.patients,
the services the HL7 adapter calls), seen with dcmtk's findscu."""

from __future__ import annotations

from django.db import transaction

from ris.commands import MergePatients, PatientData, PatientIdentity, UpdatePatient
from ris.services.patients import merge_patients, update_patient
from tests.factories import local, make_patient, make_step
from tests.support.dicom import findscu

KEYS = ["PatientName=", "PatientID=", "IssuerOfPatientID=", "AccessionNumber="]


def _answers(server, tmp_path, *keys):
    proc, items = findscu(server, [*KEYS, *keys], tmp_path)
    assert proc.returncode == 0, proc.stderr
    return sorted((i.AccessionNumber, str(i.PatientName), i.PatientID) for i in items)


def test_a08_new_name_in_the_next_query(dicom_server, tmp_path):
    make_step(make_patient("OLDNAME^ANNA", "P1", issuer="HOSP"), accession="ACC1", start=local(2026, 11, 26, 9))
    assert _answers(dicom_server, tmp_path) == [("ACC1", "OLDNAME^ANNA", "P1")]
    with transaction.atomic():
        update_patient(UpdatePatient(patient=PatientData(identifiers=[PatientIdentity("P1", "HOSP")],
                                                         patient_name="NEWNAME^ANNA"), cause="A08 test"))
    assert _answers(dicom_server, tmp_path) == [("ACC1", "NEWNAME^ANNA", "P1")]
    assert _answers(dicom_server, tmp_path, "PatientName=OLDNAME*") == []


def test_a40_steps_come_back_under_the_surviving_id(dicom_server, tmp_path):
    survivor = make_patient("SMITH^JOHN", "SURV1", issuer="HOSP")
    retired = make_patient("SMITH^JON", "OLD9", issuer="HOSP")
    make_step(survivor, accession="ACC1", start=local(2026, 11, 26, 9))
    make_step(retired, accession="ACC2", start=local(2026, 11, 26, 10))
    assert _answers(dicom_server, tmp_path) == [("ACC1", "SMITH^JOHN", "SURV1"), ("ACC2", "SMITH^JON", "OLD9")]
    with transaction.atomic():
        merge_patients(MergePatients(survivor=PatientData(identifiers=[PatientIdentity("SURV1", "HOSP")]),
                                     retired=PatientIdentity("OLD9", "HOSP"), cause="A40 test"))
    assert _answers(dicom_server, tmp_path) == [("ACC1", "SMITH^JOHN", "SURV1"), ("ACC2", "SMITH^JOHN", "SURV1")]
    assert _answers(dicom_server, tmp_path, "PatientID=SURV1") == [
        ("ACC1", "SMITH^JOHN", "SURV1"), ("ACC2", "SMITH^JOHN", "SURV1")]
    assert _answers(dicom_server, tmp_path, "PatientID=OLD9") == []
