"""C-FIND answers written by ``pacs.dimse.flat`` are byte for byte what pydicom writes for the
same data set (PS3.5 7.1: Implicit and Explicit VR Little Endian), at every level, with empty and
multi-valued keys, non-ASCII values (ISO_IR 192), a requested SpecificCharacterSet and keys the
index does not hold (returned empty, SQ included)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom.dsutils import encode as pydicom_encode

from pacs.dimse import flat, qr
from pacs.models import Instance, Series, Study

pytestmark = pytest.mark.django_db

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def studies():
    out = []
    for n, (name, modalities) in enumerate((("TESTPERSON^FLAT", ("CT",)), ("TÉSTPERSÖN^FLÄT", ("CT", "SR"))
                                            , ("TESTPERSON^ODD^X", ("MR",)))):
        study = Study.objects.create(
            study_instance_uid=generate_uid(), patient_id=f"FLAT{n}", issuer_of_patient_id="HOSP" if n else "",
            patient_name=name, patient_birth_date="19700101" if n != 2 else "", patient_sex="F" if n else "",
            study_date=dt.date(2026, 11, 20 + n), study_time="101500", accession_number=f"ACCFL{n}" + "X" * n,
            study_description="Chest" if n else "", modalities_in_study="\\".join(modalities),
            last_received_at=timezone.now())
        for number, modality in enumerate(modalities, start=1):
            series = Series.objects.create(study=study, series_instance_uid=generate_uid(), modality=modality,
                                           series_number=number, series_description="Axial é" if n == 1 else "")
            for i in (1, 2, 3)[: n + 1]:
                Instance.objects.create(study=study, series=series, sop_instance_uid=generate_uid(),
                                        sop_class_uid=CT, transfer_syntax_uid="1.2.840.10008.1.2.1",
                                        instance_number=i, path="x", size=1, received_at=timezone.now())
        out.append(study)
    return out


def _identifiers(studies):
    one = studies[1]
    series = Series.objects.filter(study=one).first()
    return [
        ("PATIENT", dict(QueryRetrieveLevel="PATIENT", PatientID="FLAT*", PatientName="", PatientBirthDate="",
                         PatientSex="", NumberOfPatientRelatedStudies="", NumberOfPatientRelatedInstances="")),
        ("STUDY", dict(QueryRetrieveLevel="STUDY", StudyInstanceUID="", PatientName="", PatientID="", StudyDate="",
                       StudyTime="", AccessionNumber="", ModalitiesInStudy="", StudyDescription="",
                       NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances="", ReferringPhysicianName="",
                       ProcedureCodeSequence=[], InstanceAvailability="", RetrieveAETitle="")),
        ("STUDY", dict(SpecificCharacterSet="", QueryRetrieveLevel="STUDY", PatientID="FLAT0", StudyInstanceUID="")),
        ("PATIENT", dict(QueryRetrieveLevel="SERIES", PatientID=one.patient_id, StudyInstanceUID=one.study_instance_uid,
                         SeriesInstanceUID="", Modality="", SeriesNumber="", SeriesDescription="",
                         NumberOfSeriesRelatedInstances="")),
        ("STUDY", dict(QueryRetrieveLevel="IMAGE", StudyInstanceUID=one.study_instance_uid,
                       SeriesInstanceUID=series.series_instance_uid, SOPInstanceUID="", SOPClassUID="",
                       InstanceNumber="")),
    ]


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_flat_answers_are_the_bytes_pydicom_writes(studies, syntax):
    compared = 0
    for top, keys in _identifiers(studies):
        identifier = Dataset()
        for keyword, value in keys.items():
            setattr(identifier, keyword, value)
        query, rows = qr.find(identifier, top, calling_ae_title="WS1")
        assert rows
        for row in rows:
            fast = qr.encoded_answer(query, row, syntax)
            assert isinstance(fast, bytes)
            slow = pydicom_encode(qr.build_answer(query, row), syntax == ImplicitVRLittleEndian, True)
            assert fast == slow, (top, keys)
            compared += 1
    assert compared >= 10


def test_what_flat_cannot_write_exactly_is_left_to_pydicom(studies):
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = ""
    identifier.PatientName = ""
    query, rows = qr.find(identifier, "STUDY", calling_ae_title="WS1")
    assert isinstance(qr.encoded_answer(query, rows[0], ExplicitVRBigEndian), Dataset)
    assert flat.encode([(0x00100010, "PN", "TÉST")], ImplicitVRLittleEndian) is None  # not ASCII without UTF-8
    assert flat.encode([(0x00280010, "US", 512)], ImplicitVRLittleEndian) is None  # a binary value
    assert flat.encode([(0x00281101, "US or SS", None)], ExplicitVRLittleEndian) is None  # ambiguous
    assert flat.encode([(0x00100010, "PN", "A")], ExplicitVRLittleEndian) == b"\x10\x00\x10\x00PN\x02\x00A "
