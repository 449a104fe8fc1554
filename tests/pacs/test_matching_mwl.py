"""MWL matching against the database, one rule at a time (PS3.4 C.2.2.2, K.6.1.2).

Each case builds an identifier, runs the one query (``pacs.dimse.mwl.find``) and checks
which steps answer.  The SQL is checked too: one query, no Python-side filtering.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacs.dimse.matching import IdentifierError
from pacs.dimse.mwl import build_item, find
from ris.models import PatientIdentifier, PatientMerge
from tests.factories import local, make_patient, make_step

pytestmark = pytest.mark.django_db


def identifier(sps: dict | None = None, **top) -> Dataset:
    ds = Dataset()
    for keyword, value in top.items():
        setattr(ds, keyword, value)
    item = Dataset()
    for keyword, value in (sps or {}).items():
        setattr(item, keyword, value)
    ds.ScheduledProcedureStepSequence = Sequence([item]) if sps is not None else Sequence([])
    return ds


def accessions(ds: Dataset, calling="MOD1", node=None) -> list[str]:
    ds.AccessionNumber = ds.get("AccessionNumber", "")
    matches, rows = find(ds, calling_ae_title=calling, node=node)
    return sorted(build_item(matches, row).AccessionNumber for row in rows)


@pytest.fixture
def steps():
    doe = make_patient("DOE^JOHN", "P100")
    dow = make_patient("DOW^JANE", "P200")
    smith = make_patient("SMITH^ANNA^MARIE", "X300", issuer="OTHER")
    return {
        "a": make_step(doe, accession="A1", modality="CT", station="CT1", start=local(2026, 11, 26, 8, 0)),
        "b": make_step(doe, accession="A2", modality="MR", station="MR1", start=local(2026, 11, 26, 14, 30)),
        "c": make_step(dow, accession="A3", modality="CT", station="CT2", start=local(2026, 11, 27, 9, 15)),
        "d": make_step(smith, accession="B4", modality="US", station="US1", start=local(2026, 11, 25, 23, 50)),
        "cancelled": make_step(dow, accession="C5", modality="CT", station="CT1", start=local(2026, 11, 26, 10, 0),
                               status="CANCELED"),
        "done": make_step(dow, accession="C6", modality="CT", station="CT1", start=local(2026, 11, 26, 11, 0),
                          status="COMPLETED"),
    }


ALL_OPEN = ["A1", "A2", "A3", "B4"]


@pytest.mark.parametrize(
    "top, sps, expected",
    [
        # universal matching (C.2.2.2.3)
        ({}, None, ALL_OPEN),
        ({"PatientName": ""}, {"Modality": ""}, ALL_OPEN),
        ({"PatientName": "*"}, {}, ALL_OPEN),
        # single value matching (C.2.2.2.1)
        ({"PatientID": "P100"}, None, ["A1", "A2"]),
        ({"AccessionNumber": "A3"}, None, ["A3"]),
        ({"PatientName": "DOE^JOHN"}, None, ["A1", "A2"]),
        ({"PatientName": "DOE^JOHN^^^"}, None, ["A1", "A2"]),
        ({"RequestedProcedureID": "nothing"}, None, []),
        # wildcard matching (C.2.2.2.4) on names, IDs, AE titles
        ({"PatientName": "DO*"}, None, ["A1", "A2", "A3"]),
        ({"PatientName": "DO?^*"}, None, ["A1", "A2", "A3"]),
        ({"PatientName": "*MARIE"}, None, ["B4"]),
        ({"PatientID": "P*"}, None, ["A1", "A2", "A3"]),
        ({"PatientID": "?300"}, None, ["B4"]),
        ({"AccessionNumber": "A?"}, None, ["A1", "A2", "A3"]),
        ({}, {"ScheduledStationAETitle": "CT*"}, ["A1", "A3"]),
        ({}, {"ScheduledStationAETitle": "CT1"}, ["A1"]),
        # LIKE metacharacters are literal
        ({"PatientName": "DOE%"}, None, []),
        ({"AccessionNumber": "A_"}, None, []),
        # case-insensitive patient name (MWL_PATIENT_NAME_CASE_INSENSITIVE, default on)
        ({"PatientName": "doe^john"}, None, ["A1", "A2"]),
        ({"PatientName": "smith*"}, None, ["B4"]),
        # issuer of patient ID
        ({"PatientID": "X300", "IssuerOfPatientID": "OTHER"}, None, ["B4"]),
        ({"PatientID": "X300", "IssuerOfPatientID": "HOSP"}, None, []),
        # sequence matching (C.2.2.2.6) inside ScheduledProcedureStepSequence
        ({}, {"Modality": "CT"}, ["A1", "A3"]),
        ({}, {"Modality": "CT", "ScheduledStationAETitle": "CT2"}, ["A3"]),
        ({"PatientID": "P100"}, {"Modality": "MR"}, ["A2"]),
        # date ranges (C.2.2.2.5), in the department's zone
        ({}, {"ScheduledProcedureStepStartDate": "20261126"}, ["A1", "A2"]),
        ({}, {"ScheduledProcedureStepStartDate": "20261126-20261127"}, ["A1", "A2", "A3"]),
        ({}, {"ScheduledProcedureStepStartDate": "-20261125"}, ["B4"]),
        ({}, {"ScheduledProcedureStepStartDate": "20261127-"}, ["A3"]),
        # time ranges without a date: the time of day on any date
        ({}, {"ScheduledProcedureStepStartTime": "0800-1000"}, ["A1", "A3"]),
        ({}, {"ScheduledProcedureStepStartTime": "1430"}, ["A2"]),
        ({}, {"ScheduledProcedureStepStartTime": "2300-0830"}, ["A1", "B4"]),
        # combined date-time range (C.2.2.2.5.1)
        ({}, {"ScheduledProcedureStepStartDate": "20261126", "ScheduledProcedureStepStartTime": "1200-"}, ["A2"]),
        ({}, {"ScheduledProcedureStepStartDate": "20261125-20261126",
              "ScheduledProcedureStepStartTime": "2300-1200"}, ["A1", "B4"]),
        ({}, {"ScheduledProcedureStepStartDate": "20261126-20261127",
              "ScheduledProcedureStepStartTime": "1000-0900"}, ["A2"]),
        # hidden states come back when asked for
        ({}, {"ScheduledProcedureStepStatus": "CANCELED"}, ["C5"]),
        ({}, {"ScheduledProcedureStepStatus": "COMPLETED"}, ["C6"]),
        # other keys
        ({"PlacerOrderNumberImagingServiceRequest": "PL*"}, {"Modality": "US"}, ["B4"]),
    ],
)
def test_matching_rules(steps, top, sps, expected):
    assert accessions(identifier(sps, **top)) == expected


def test_list_of_uid_matching(steps):
    a, c = steps["a"].requested_procedure, steps["c"].requested_procedure
    ds = identifier(None, StudyInstanceUID=[a.study_instance_uid, c.study_instance_uid])
    assert accessions(ds) == ["A1", "A3"]
    assert accessions(identifier(None, StudyInstanceUID=a.study_instance_uid)) == ["A1"]


def test_case_sensitive_patient_name_by_setting(steps, settings):
    settings.MWL_PATIENT_NAME_CASE_INSENSITIVE = False
    assert accessions(identifier(None, PatientName="doe^john")) == []
    assert accessions(identifier(None, PatientName="DOE^JOHN")) == ["A1", "A2"]


def test_filter_by_calling_ae_setting(steps, settings):
    from pacs.models import DicomNode

    settings.MWL_FILTER_BY_CALLING_AE = True
    assert accessions(identifier({}), calling="CT1") == ["A1"]
    node = DicomNode.objects.create(ae_title="SCANNER", station_ae_title="CT2")
    assert accessions(identifier({}), calling="SCANNER", node=node) == ["A3"]
    # an explicit ScheduledStationAETitle wins over the calling AE
    assert accessions(identifier({"ScheduledStationAETitle": "MR1"}), calling="CT1") == ["A2"]


def test_result_cap_logs_a_warning(steps, settings, caplog):
    settings.MWL_MAX_RESULTS = 2
    assert accessions(identifier(None)) == ["A1", "B4"]  # the earliest two
    assert "MWL_MAX_RESULTS" in caplog.text


def test_one_query_whatever_is_asked(steps):
    ds = identifier(
        {"Modality": "CT", "ScheduledProcedureStepStartDate": "20261126-20261127", "ScheduledStationAETitle": "",
         "ScheduledProcedureStepStartTime": "", "ScheduledProtocolCodeSequence": Sequence([])},
        PatientName="D*", PatientID="P*", IssuerOfPatientID="", AccessionNumber="", StudyInstanceUID="",
        RequestedProcedureCodeSequence=Sequence([]),
    )
    with CaptureQueriesContext(connection) as queries:
        matches, rows = find(ds, calling_ae_title="MOD1")
        items = [build_item(matches, row) for row in rows]
    assert len(queries) == 1, [q["sql"] for q in queries]
    sql = queries[0]["sql"]
    assert "LIKE" in sql and "scheduled_start" in sql
    assert sorted(i.AccessionNumber for i in items) == ["A1", "A3"]


@pytest.mark.parametrize(
    "top, sps",
    [
        ({}, {"ScheduledProcedureStepStartDate": "2026-11-26"}),
        ({}, {"ScheduledProcedureStepStartDate": "20261340"}),
        ({}, {"ScheduledProcedureStepStartTime": "2561"}),
        ({"PatientBirthDate": "19xx0101"}, None),
        ({"StudyInstanceUID": "1.2.*"}, None),
        ({"PregnancyStatus": "x"}, None),
        ({"PatientName": "DO\x00E*"}, None),  # NUL: in no character repertoire (PS3.5 6.1)
        ({"PatientID": "P\x00"}, None),
        ({"StudyInstanceUID": "1.2\x00.3"}, None),  # NUL pads a UID only at its end (PS3.5 6.2)
        ({}, {"ScheduledStationAETitle": "CT\x001"}),
    ],
)
def test_malformed_identifiers_refused(steps, top, sps):
    ds = Dataset()
    for keyword, value in top.items():
        ds.add_new(keyword, _vr(keyword), value)
    if sps is not None:
        item = Dataset()
        for keyword, value in sps.items():
            item.add_new(keyword, _vr(keyword), value)
        ds.ScheduledProcedureStepSequence = Sequence([item])
    with pytest.raises(IdentifierError):
        find(ds, calling_ae_title="MOD1")


def _vr(keyword):
    from pydicom.datadict import dictionary_VR

    return dictionary_VR(keyword)


def test_two_items_in_a_sequence_key_refused(steps):
    ds = Dataset()
    ds.ScheduledProcedureStepSequence = Sequence([Dataset(), Dataset()])
    with pytest.raises(IdentifierError):
        find(ds, calling_ae_title="MOD1")


def test_sequence_expected_but_value_given(steps):
    ds = Dataset()
    ds.add_new("ScheduledProcedureStepSequence", "LO", "CT")
    with pytest.raises(IdentifierError):
        find(ds, calling_ae_title="MOD1")


def test_merged_patient_answers_under_the_survivor(steps):
    """After A40 the retired patient's steps come back under the surviving ID (model-level)."""
    survivor = steps["a"].requested_procedure.order.patient
    retired = steps["c"].requested_procedure.order.patient
    retired_identifier = retired.identifiers.get()
    for order in retired.orders.all():
        order.patient = survivor
        order.save()
    retired_identifier.patient = survivor
    retired_identifier.save()
    PatientMerge.objects.create(survivor=survivor, retired=retired, retired_patient_id="P200",
                                retired_issuer_of_patient_id="HOSP", cause="A40 test")
    assert PatientIdentifier.objects.filter(patient=survivor).count() == 2
    ds = identifier(None, PatientID="", PatientName="", AccessionNumber="")
    matches, rows = find(ds, calling_ae_title="MOD1")
    by_accession = {build_item(matches, r).AccessionNumber: build_item(matches, r) for r in rows}
    assert by_accession["A3"].PatientID == "P100"
    assert accessions(identifier(None, PatientID="P100")) == ["A1", "A2", "A3"]
    assert accessions(identifier(None, PatientID="P200")) == []
