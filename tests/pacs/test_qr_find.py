"""C-FIND of the Query/Retrieve SCP as one query of the image index (PS3.4 C.4.1, matching
C.2.2.2): the identifier read into the shared index query, the combined StudyDate and StudyTime
range (C.2.2.2.5.1), one SQL query per C-FIND at every level."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacs.dimse import qr
from pacs.dimse.matching import IdentifierError
from pacs.models import Instance, Series, Study

pytestmark = pytest.mark.django_db

CT = "1.2.840.10008.5.1.4.1.1.2"


def _study(patient_id: str, date: dt.date, time: str, modalities=("CT",)) -> Study:
    study = Study.objects.create(
        study_instance_uid=generate_uid(), patient_id=patient_id, issuer_of_patient_id="HOSP",
        patient_name="TESTPERSON^QR", patient_birth_date="19700101", study_date=date, study_time=time,
        modalities_in_study="\\".join(modalities), last_received_at=timezone.now())
    for number, modality in enumerate(modalities, start=1):
        series = Series.objects.create(study=study, series_instance_uid=generate_uid(), modality=modality,
                                       series_number=number)
        for i in (1, 2):
            Instance.objects.create(study=study, series=series, sop_instance_uid=generate_uid(), sop_class_uid=CT,
                                    transfer_syntax_uid="1.2.840.10008.1.2.1", instance_number=i, path="x",
                                    size=1, received_at=timezone.now())
    return study


def _find(top: str, **keys) -> list[Dataset]:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    query, rows = qr.find(ds, top, calling_ae_title="WS1")
    return [qr.build_answer(query, row) for row in rows]


def test_study_date_and_time_form_one_range():
    first = _study("DTR001", dt.date(2026, 11, 20), "150000")
    middle = _study("DTR001", dt.date(2026, 11, 22), "090000")
    last = _study("DTR001", dt.date(2026, 11, 25), "100000")
    _study("DTR001", dt.date(2026, 11, 20), "080000")  # before the lower time on the first date
    _study("DTR001", dt.date(2026, 11, 25), "130000")  # after the upper time on the last date
    answers = _find("STUDY", QueryRetrieveLevel="STUDY", StudyInstanceUID="", PatientID="DTR001",
                    StudyDate="20261120-20261125", StudyTime="120000-110000")
    # From 2026-11-20 12:00 to 2026-11-25 11:00 (C.2.2.2.5.1); as two separate ranges no time
    # would be both after 12:00 and before 11:00.
    assert [a.StudyInstanceUID for a in answers] == [
        first.study_instance_uid, middle.study_instance_uid, last.study_instance_uid]
    assert [a.StudyDate for a in answers] == ["20261120", "20261122", "20261125"]


def test_a_bad_range_or_a_key_below_the_level_is_refused():
    with pytest.raises(IdentifierError):
        _find("STUDY", QueryRetrieveLevel="STUDY", StudyDate="20261120-20261125", StudyTime="25-")
    with pytest.raises(IdentifierError):
        _find("STUDY", QueryRetrieveLevel="STUDY", Modality="CT")


def test_one_sql_query_per_c_find_at_every_level():
    studies = [_study(f"ONE{n}", dt.date(2026, 11, 20 + n), "101500", modalities=("CT", "PR")) for n in range(3)]
    one = studies[0]
    series = Series.objects.filter(study=one).order_by("series_number").first()
    identifiers = [
        ("PATIENT", dict(QueryRetrieveLevel="PATIENT", PatientID="ONE*", PatientName="", NumberOfPatientRelatedStudies="",
                         NumberOfPatientRelatedSeries="", NumberOfPatientRelatedInstances="")),
        ("STUDY", dict(QueryRetrieveLevel="STUDY", StudyInstanceUID="", ModalitiesInStudy="PR", PatientID="ONE*",
                       NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances="")),
        ("STUDY", dict(QueryRetrieveLevel="SERIES", StudyInstanceUID=one.study_instance_uid, SeriesInstanceUID="",
                       Modality="", NumberOfSeriesRelatedInstances="", NumberOfStudyRelatedInstances="")),
        ("PATIENT", dict(QueryRetrieveLevel="IMAGE", PatientID="ONE0", StudyInstanceUID=one.study_instance_uid,
                         SeriesInstanceUID=series.series_instance_uid, SOPInstanceUID="", InstanceNumber="",
                         NumberOfSeriesRelatedInstances="", NumberOfStudyRelatedInstances="",
                         NumberOfStudyRelatedSeries="")),
    ]
    expected = [3, 3, 2, 2]
    for (top, keys), count in zip(identifiers, expected, strict=True):
        with CaptureQueriesContext(connection) as queries:
            answers = _find(top, **keys)
        assert len(answers) == count, keys["QueryRetrieveLevel"]
        assert len(queries.captured_queries) == 1, [q["sql"] for q in queries.captured_queries]
    patient = _find("PATIENT", **identifiers[0][1])[0]
    assert (patient.NumberOfPatientRelatedStudies, patient.NumberOfPatientRelatedSeries,
            patient.NumberOfPatientRelatedInstances) == (1, 2, 4)
    series_answer = _find("STUDY", **identifiers[2][1])[0]
    assert series_answer.NumberOfSeriesRelatedInstances == 2 and series_answer.NumberOfStudyRelatedInstances == 4
    image_answers = _find("PATIENT", **identifiers[3][1])
    assert [(a.NumberOfSeriesRelatedInstances, a.NumberOfStudyRelatedInstances, a.NumberOfStudyRelatedSeries)
            for a in image_answers] == [(2, 4, 2), (2, 4, 2)]


def test_instance_availability_is_nearline_for_a_study_purged_after_archiving(client):
    """PS3.4 C.4.23.1.1 / PS3.3 C.4.23.1.1: the files of a purged study are fetched back from the
    VNA before they can be sent, so its instances are NEARLINE, a held study's ONLINE; the same
    for C-FIND at every level below the patient and for QIDO-RS (one index query module).  A
    value given for it is not a filter; at the patient level it is answered empty."""
    from django.contrib.auth.models import Group, User

    from project.access import TECHNOLOGIST

    held = _study("AVL001", dt.date(2026, 11, 20), "090000")
    purged = _study("AVL001", dt.date(2026, 11, 21), "090000")
    Study.objects.filter(pk=purged.pk).update(purged_at=timezone.now())
    expected = {held.study_instance_uid: "ONLINE", purged.study_instance_uid: "NEARLINE"}
    for asked in ("", "ONLINE"):
        answers = _find("PATIENT", QueryRetrieveLevel="STUDY", PatientID="AVL001", StudyInstanceUID="",
                        InstanceAvailability=asked)
        assert {(a.StudyInstanceUID, a.InstanceAvailability) for a in answers} == set(expected.items()), asked
    for study in (held, purged):
        series = Series.objects.filter(study=study).first()
        for level, extra in (("SERIES", {"SeriesInstanceUID": ""}),
                             ("IMAGE", {"SeriesInstanceUID": series.series_instance_uid, "SOPInstanceUID": ""})):
            answers = _find("STUDY", QueryRetrieveLevel=level, StudyInstanceUID=study.study_instance_uid,
                            InstanceAvailability="", **extra)
            assert answers and {a.InstanceAvailability for a in answers} == {expected[study.study_instance_uid]}
    # One answer for the patient (of two studies), also when no count or name is asked for.
    patient = _find("PATIENT", QueryRetrieveLevel="PATIENT", PatientID="AVL001", InstanceAvailability="")
    assert len(patient) == 1 and patient[0].InstanceAvailability in ("", None)
    assert len(_find("PATIENT", QueryRetrieveLevel="PATIENT", PatientID="AVL*")) == 1

    user = User.objects.create_user("avl")
    user.groups.add(Group.objects.get_or_create(name=TECHNOLOGIST)[0])
    client.force_login(user)
    r = client.get("/dicomweb/studies", {"PatientID": "AVL001", "includefield": "InstanceAvailability"},
                   HTTP_ACCEPT="application/dicom+json")
    assert r.status_code == 200
    assert {d["0020000D"]["Value"][0]: d["00080056"]["Value"][0] for d in r.json()} == expected
