"""MWL C-FIND over a real socket, with dcmtk's findscu as the modality (PS3.4 Annex K)."""

from __future__ import annotations

import pytest

from ris.models import ScheduledProcedureStep
from tests.factories import local, make_patient, make_step
from tests.support.dicom import findscu

SPS = "(0040,0100)[0]"


@pytest.fixture
def worklist(transactional_db):
    jose = make_patient("GARCÍA^JOSÉ", "P1", patient_birth_date=None, patient_sex="M")
    make_step(jose, accession="ACC1", modality="CT", station="CT1", start=local(2026, 11, 26, 9, 0))
    make_step(make_patient("DOE^JOHN", "P2"), accession="ACC2", modality="MR", station="MR1",
              start=local(2026, 11, 26, 10, 0))
    make_step(make_patient("ROE^RICHARD", "P3"), accession="ACC3", modality="CT", station="CT1",
              start=local(2026, 11, 27, 9, 0), status="CANCELED")


RETURN_KEYS = [
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientWeight",
    "MedicalAlerts", "Allergies", "PregnancyStatus", "AdmissionID", "CurrentPatientLocation",
    "ReferringPhysicianName", "RequestingPhysician", "PlacerOrderNumberImagingServiceRequest",
    "FillerOrderNumberImagingServiceRequest", "ReasonForTheRequestedProcedure", "AccessionNumber",
    "RequestedProcedureID", "RequestedProcedureDescription", "RequestedProcedurePriority", "StudyInstanceUID",
    "RequestedProcedureCodeSequence", "ReferencedStudySequence",
]
SPS_RETURN_KEYS = [
    "ScheduledStationAETitle", "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime", "Modality",
    "ScheduledPerformingPhysicianName", "ScheduledProcedureStepDescription", "ScheduledProtocolCodeSequence",
    "ScheduledProcedureStepID", "ScheduledStationName", "ScheduledProcedureStepLocation",
    "ScheduledProcedureStepStatus",
]


def test_modality_and_date_query_returns_every_requested_key(dicom_server, worklist, tmp_path):
    keys = [*RETURN_KEYS, *(f"{SPS}.{k}" for k in SPS_RETURN_KEYS)]
    keys = [k for k in keys if not k.endswith("Sequence")]  # sequences below, as empty items
    keys += ["RequestedProcedureCodeSequence", "ReferencedStudySequence"]
    keys = [f"{k}=" for k in keys]
    keys += [f"{SPS}.Modality=CT", f"{SPS}.ScheduledProcedureStepStartDate=20261126-20261127"]
    proc, items = findscu(dicom_server, keys, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(items) == 1  # ACC3 is canceled: hidden
    item = items[0]
    assert item.AccessionNumber == "ACC1"
    assert item.SpecificCharacterSet == "ISO_IR 192"
    assert str(item.PatientName) == "GARCÍA^JOSÉ"
    assert item.PatientID == "P1" and item.IssuerOfPatientID == "HOSP"
    assert item.PatientSex == "M"
    assert item.PatientBirthDate == ""  # asked, unknown: returned empty
    assert item.RequestedProcedureCodeSequence[0].CodeValue == "CTHD"
    assert len(item.ReferencedStudySequence) == 0
    sps = item.ScheduledProcedureStepSequence[0]
    assert sps.Modality == "CT" and sps.ScheduledStationAETitle == "CT1"
    assert sps.ScheduledProcedureStepStartDate == "20261126" and sps.ScheduledProcedureStepStartTime == "090000"
    assert sps.ScheduledProcedureStepStatus == "SCHEDULED"
    # exactly the requested keys, plus SpecificCharacterSet
    asked = set(RETURN_KEYS) | {"ScheduledProcedureStepSequence", "SpecificCharacterSet"}
    assert {e.keyword for e in item} == asked
    assert {e.keyword for e in sps} == set(SPS_RETURN_KEYS) - {"ScheduledProtocolCodeSequence"}


def test_only_requested_keys_come_back(dicom_server, worklist, tmp_path):
    proc, items = findscu(dicom_server, ["PatientID=P2", "AccessionNumber="], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [(i.PatientID, i.AccessionNumber) for i in items] == [("P2", "ACC2")]
    assert {e.keyword for e in items[0]} <= {"PatientID", "AccessionNumber", "SpecificCharacterSet"}


def test_empty_sequence_returns_all_its_attributes(dicom_server, worklist, tmp_path):
    proc, items = findscu(dicom_server, ["AccessionNumber=ACC2", "ScheduledProcedureStepSequence"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    sps = items[0].ScheduledProcedureStepSequence[0]
    assert sps.Modality == "MR" and sps.ScheduledProcedureStepID
    assert sps.ScheduledProtocolCodeSequence[0].CodeMeaning == "protocol one"


def test_wildcard_name_case_insensitive(dicom_server, worklist, tmp_path):
    proc, items = findscu(dicom_server, ["PatientName=doe*", "AccessionNumber="], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [i.AccessionNumber for i in items] == ["ACC2"]


def test_cancel_stops_the_answers(dicom_server, transactional_db, tmp_path, settings):
    """C-CANCEL (PS3.7 9.3.2.3): the SCP stops and ends with 0xFE00.

    Enough matches (3,000 steps of one requested procedure, bulk-inserted) that the answers
    cannot all be on the wire before findscu's C-CANCEL, sent after the first one, arrives."""
    settings.MWL_MAX_RESULTS = 5000
    patient = make_patient("MANY^ITEMS", "P9")
    first = make_step(patient, accession="M0000", start=local(2026, 11, 26, 8, 0))
    ScheduledProcedureStep.objects.bulk_create(
        ScheduledProcedureStep(requested_procedure=first.requested_procedure, scheduled_procedure_step_id=f"S{n:05d}",
                               modality="CT", scheduled_station_ae_title="CT1", scheduled_start=first.scheduled_start)
        for n in range(1, 3000)
    )
    proc, items = findscu(dicom_server, ["AccessionNumber=", "PatientName="], tmp_path, extra=["--cancel", "1", "-v"])
    assert proc.returncode == 0, proc.stderr
    assert 1 <= len(items) < 3000
    assert "MatchingTerminatedDueToCancelRequest" in proc.stdout + proc.stderr


def test_query_in_latin1_matches_a_utf8_name(dicom_server, worklist, tmp_path):
    """The identifier's SpecificCharacterSet is honoured: ISO_IR 100 bytes for 'GARCÍA*' match, and
    the answer comes back in ISO_IR 192 (UTF-8)."""
    latin1 = "PatientName=GARCÍA*".encode("latin-1")  # the bytes go on findscu's command line as they are
    proc, items = findscu(dicom_server, ["SpecificCharacterSet=ISO_IR 100", latin1, "AccessionNumber="], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [(str(i.PatientName), i.SpecificCharacterSet) for i in items] == [("GARCÍA^JOSÉ", "ISO_IR 192")]


def test_dates_and_times_in_the_department_zone(dicom_server, tmp_path, settings):
    """ScheduledProcedureStepStartDate/Time are local (TIME_ZONE): 03:00 UTC on the 27th is 22:00 on
    the 26th in New York, both for matching and in the answer."""
    from datetime import UTC, datetime

    settings.TIME_ZONE = "America/New_York"
    make_step(make_patient("ZONE^TEST", "Z1"), accession="TZ1", start=datetime(2026, 11, 27, 3, 0, tzinfo=UTC))
    proc, items = findscu(dicom_server, ["AccessionNumber=", f"{SPS}.ScheduledProcedureStepStartDate=20261126",
                                         f"{SPS}.ScheduledProcedureStepStartTime=2100-2300"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [i.AccessionNumber for i in items] == ["TZ1"]
    sps = items[0].ScheduledProcedureStepSequence[0]
    assert (sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime) == ("20261126", "220000")
    _, none = findscu(dicom_server, ["AccessionNumber=", f"{SPS}.ScheduledProcedureStepStartDate=20261127"],
                      tmp_path)
    assert none == []
