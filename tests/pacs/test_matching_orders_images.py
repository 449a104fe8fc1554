"""Matching received studies to orders (IHE Scheduled Workflow: the images stored, RAD-8, carry
the Accession Number and Study Instance UID the modality took from the worklist, RAD-5; an
unscheduled exam carries neither and is reconciled later, IHE Patient Information
Reconciliation): storescu sends, the engine matches by accession (+issuer), Study UID, patient +
date + modality; mismatched demographics are flagged and the corrections for the VNA recorded."""

from __future__ import annotations

import datetime as dt

import pytest

from pacs.models import Study
from pacs.models import images as im
from tests.factories import local, make_patient, make_step
from tests.support.dicom import new_uid, port
from tests.support.orthanc import storescu, write_study

pytestmark = pytest.mark.django_db(transaction=True)


def send(engine, tmp_path, n=2, **kwargs) -> Study:
    study_uid = kwargs.pop("study_instance_uid", None) or new_uid()
    paths = write_study(tmp_path / new_uid(), n, study_instance_uid=study_uid, **kwargs)
    proc = storescu(port(engine), paths)
    assert proc.returncode == 0, proc.stderr
    return Study.objects.get(study_instance_uid=study_uid)


def test_matched_by_accession_number_with_mismatched_name_flagged_and_corrected(engine, tmp_path):
    patient = make_patient("DOE^JANE", patient_id="P100", issuer="HOSP", patient_sex="F")
    step = make_step(patient, accession="ACC100")
    study = send(engine, tmp_path, accession_number="ACC100", patient_id="P100", issuer_of_patient_id="HOSP",
                 patient_name="DOE^JOHN", sex="F")
    assert study.requested_procedure_id == step.requested_procedure_id
    assert study.match_method == im.MATCH_ACCESSION
    assert [m["keyword"] for m in study.demographics_mismatch] == ["PatientName"]
    assert study.corrections == {"PatientName": ["DOE^JOHN", "DOE^JANE"]}


def test_accession_from_another_issuer_does_not_match(engine, tmp_path):
    make_step(make_patient(patient_id="P101"), accession="ACC101",
              rp_fields={"accession_number_issuer": "HOSP-A"})
    study = send(engine, tmp_path, accession_number="ACC101", patient_id="ZZZ")
    Study.objects.filter(pk=study.pk).update(issuer_of_accession_number="OTHER")
    from pacs.services.order_matching import find_order

    study.refresh_from_db()
    study.requested_procedure = None
    assert find_order(study) == (None, im.MATCH_NONE)


def test_matched_by_study_instance_uid_without_accession(engine, tmp_path):
    step = make_step(make_patient(patient_id="P102"), accession="ACC102")
    rp = step.requested_procedure
    rp.study_instance_uid = new_uid()
    rp.save()
    study = send(engine, tmp_path, study_instance_uid=rp.study_instance_uid, accession_number="", patient_id="P102")
    assert study.match_method == im.MATCH_STUDY_UID and study.requested_procedure_id == rp.pk
    assert study.corrections["AccessionNumber"] == ["", "ACC102"]


def test_matched_by_patient_date_and_modality(engine, tmp_path):
    patient = make_patient("ROE^RICK", patient_id="P103", issuer="HOSP")
    step = make_step(patient, accession="ACC103", modality="MR", start=local(2026, 11, 20, 10, 0))
    make_step(patient, accession="ACC104", modality="CT", start=local(2026, 11, 20, 11, 0))  # other modality
    study = send(engine, tmp_path, accession_number="", patient_id="P103", issuer_of_patient_id="HOSP",
                 patient_name="ROE^RICK", modality="MR", study_date=dt.date(2026, 11, 20))
    assert study.match_method == im.MATCH_PATIENT_DATE_MODALITY
    assert study.requested_procedure_id == step.requested_procedure_id


def test_ambiguous_or_unknown_study_stays_unmatched(engine, tmp_path):
    patient = make_patient(patient_id="P105")
    make_step(patient, accession="ACC105", modality="CT", start=local(2026, 11, 21, 9, 0))
    make_step(patient, accession="ACC106", modality="CT", start=local(2026, 11, 21, 10, 0))
    ambiguous = send(engine, tmp_path, accession_number="", patient_id="P105", study_date=dt.date(2026, 11, 21))
    unknown = send(engine, tmp_path, accession_number="NOPE", patient_id="NOBODY")
    for study in (ambiguous, unknown):
        assert study.requested_procedure_id is None and study.match_method == im.MATCH_NONE
        assert study.status == im.RECEIVING
