"""QIDO-RS (PS3.18 10.6) on the image index: the matching rules, the parameters, the answers,
who may search (index rows only: no files needed for a search)."""

from __future__ import annotations

import datetime as dt
from urllib.parse import unquote

import pytest
import time_machine
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from pydicom.uid import generate_uid

from audit.models import AuditRecord
from pacs.models import Instance, Series, Study
from project import links
from project.access import TECHNOLOGIST
from tests import factories

pytestmark = pytest.mark.django_db

CT = "1.2.840.10008.5.1.4.1.1.2"


def _study(*, patient_id="QIDO001", name="TESTPERSON^ANNA", date=dt.date(2026, 3, 10), time="101500",
           accession="ACCQ1", modalities=("CT",), instances=2) -> Study:
    study = Study.objects.create(
        study_instance_uid=generate_uid(), accession_number=accession, patient_id=patient_id,
        issuer_of_patient_id="HOSP", patient_name=name, patient_birth_date="19700101", patient_sex="F",
        study_date=date, study_time=time, study_description="SYNTHETIC", modalities_in_study="\\".join(modalities),
        last_received_at=timezone.now())
    for number, modality in enumerate(modalities, start=1):
        series = Series.objects.create(study=study, series_instance_uid=generate_uid(), modality=modality,
                                       series_number=number, series_description=f"{modality} series")
        for i in range(1, instances + 1):
            uid = generate_uid()
            Instance.objects.create(study=study, series=series, sop_instance_uid=uid, sop_class_uid=CT,
                                    transfer_syntax_uid="1.2.840.10008.1.2.1", instance_number=i,
                                    path=f"{study.study_instance_uid}/{series.series_instance_uid}/{uid}.dcm",
                                    size=1, received_at=timezone.now())
    return study


@pytest.fixture
def tech_client(client):
    client.force_login(factories.user("tech", TECHNOLOGIST))
    return client


def _uids(response, tag="0020000D") -> set[str]:
    return {item[tag]["Value"][0] for item in response.json()} if response.status_code == 200 else set()


def test_study_search_matching_rules(tech_client):
    a = _study(patient_id="QIDO001", name="TESTPERSON^ANNA", date=dt.date(2026, 3, 10), accession="ACCQ1")
    b = _study(patient_id="QIDO002", name="EXAMPLE^BRUNO", date=dt.date(2026, 3, 12), time="151000",
               accession="ACCQ2", modalities=("MR", "SR"))
    c = _study(patient_id="OTHER03", name="testperson^carl", date=dt.date(2025, 1, 1), accession="X3")

    def search(**params):
        return _uids(tech_client.get("/dicomweb/studies", params))

    everyone = {a.study_instance_uid, b.study_instance_uid, c.study_instance_uid}
    assert search() == everyone
    assert search(PatientID="QIDO001") == {a.study_instance_uid}  # single value
    assert search(PatientID="QIDO*") == {a.study_instance_uid, b.study_instance_uid}  # wildcard *
    assert search(AccessionNumber="ACCQ?") == {a.study_instance_uid, b.study_instance_uid}  # wildcard ?
    assert search(PatientName="testperson*") == {a.study_instance_uid, c.study_instance_uid}  # PN ignores case
    assert search(StudyDate="20260301-20260311") == {a.study_instance_uid}  # date range
    assert search(StudyDate="20260311-") == {b.study_instance_uid}  # open upper end
    assert search(StudyDate="-20251231") == {c.study_instance_uid}  # open lower end
    # StudyDate with StudyTime: one date-time range (PS3.4 C.2.2.2.5.1)
    assert search(StudyDate="20260310-20260312", StudyTime="120000-") == {b.study_instance_uid}
    assert search(ModalitiesInStudy="MR") == {b.study_instance_uid}
    assert search(**{"00080061": "CT"}) == {a.study_instance_uid, c.study_instance_uid}  # tag, not keyword
    uid_list = f"{a.study_instance_uid},{c.study_instance_uid}"
    assert search(StudyInstanceUID=uid_list) == {a.study_instance_uid, c.study_instance_uid}  # UID list
    assert search(PatientID="NOBODY") == set()


def test_study_results_are_dicom_json_with_counts_and_retrieve_url(tech_client):
    study = _study(modalities=("CT", "SR"), instances=3)
    response = tech_client.get("/dicomweb/studies", {"StudyInstanceUID": study.study_instance_uid})
    assert response.status_code == 200
    assert response["Content-Type"] == "application/dicom+json"
    [item] = response.json()
    assert item["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "TESTPERSON^ANNA"}]}
    assert item["00080020"] == {"vr": "DA", "Value": ["20260310"]}
    assert item["00080061"] == {"vr": "CS", "Value": ["CT", "SR"]}
    assert item["00201206"] == {"vr": "IS", "Value": [2]}  # NumberOfStudyRelatedSeries
    assert item["00201208"] == {"vr": "IS", "Value": [6]}  # NumberOfStudyRelatedInstances
    assert item["00081190"]["Value"][0] == f"http://testserver/dicomweb/studies/{study.study_instance_uid}"
    assert list(item) == sorted(item)


def test_series_and_instance_levels(tech_client):
    study = _study(modalities=("CT", "MR"), instances=2)
    _study(patient_id="OTHER")
    response = tech_client.get(f"/dicomweb/studies/{study.study_instance_uid}/series")
    assert response.status_code == 200
    assert [s["00080060"]["Value"][0] for s in response.json()] == ["CT", "MR"]
    assert "00100020" not in response.json()[0]  # study attributes not repeated under the study's path
    mr = Series.objects.get(study=study, modality="MR")
    assert _uids(tech_client.get("/dicomweb/series", {"Modality": "MR", "PatientID": "QIDO001"}),
                 "0020000E") == {mr.series_instance_uid}
    assert "00100020" in tech_client.get("/dicomweb/series", {"Modality": "MR"}).json()[0]
    response = tech_client.get(f"/dicomweb/studies/{study.study_instance_uid}/series/{mr.series_instance_uid}/"
                               "instances", {"InstanceNumber": "2"})
    [instance] = response.json()
    assert instance["00080018"]["Value"][0] == mr.instances.get(instance_number=2).sop_instance_uid
    assert instance["00081190"]["Value"][0].endswith(f"/instances/{instance['00080018']['Value'][0]}")
    assert len(tech_client.get("/dicomweb/instances", {"SOPClassUID": CT}).json()) == 6


def test_includefield_limit_offset(tech_client):
    studies = [_study(accession=f"ACCL{i}") for i in range(5)]
    page = tech_client.get("/dicomweb/studies", {"limit": "2", "offset": "1"})
    assert _uids(page) == {s.study_instance_uid for s in studies[1:3]}
    assert "additional results" in page["Warning"]
    last = tech_client.get("/dicomweb/studies", {"limit": "2", "offset": "4"})
    assert len(last.json()) == 1 and "Warning" not in last
    item = tech_client.get("/dicomweb/studies", {"includefield": "StudyDescription,00100021",
                                                 "limit": "1"}).json()[0]
    assert item["00081030"]["Value"] == ["SYNTHETIC"] and item["00100021"]["Value"] == ["HOSP"]
    plain = tech_client.get("/dicomweb/studies", {"limit": "1"}).json()[0]
    assert "00081030" not in plain
    every = tech_client.get("/dicomweb/studies", {"includefield": "all", "limit": "1"}).json()[0]
    assert {"00081030", "00100021", "00100040"} <= set(every)


def test_no_match_is_204_and_fuzzy_matching_is_warned(tech_client):
    _study()
    none = tech_client.get("/dicomweb/studies", {"PatientID": "NOBODY"})
    assert none.status_code == 204 and none.content == b""
    fuzzy = tech_client.get("/dicomweb/studies", {"fuzzymatching": "true"})
    assert fuzzy.status_code == 200 and "fuzzymatching parameter is not supported" in fuzzy["Warning"]
    unsupported = tech_client.get("/dicomweb/studies", {"ReferringPhysicianName": "X*"})
    assert unsupported.status_code == 200 and "ReferringPhysicianName" in unsupported["Warning"]


@pytest.mark.parametrize("params", [
    {"limit": "-1"}, {"limit": "ten"}, {"offset": "x"}, {"fuzzymatching": "maybe"},
    {"NotAKeyword": "1"}, {"StudyDate": "2026-01"}, {"StudyDate": "20261340"}, {"InstanceNumber": "abc"},
    {"includefield": "Bogus"}, {"StudyInstanceUID": "1.2.*"},
])
def test_bad_parameters_are_400(tech_client, params):
    response = tech_client.get("/dicomweb/studies", params)
    assert response.status_code == 400, params
    assert response.json()["error"]


def test_series_key_on_study_search_is_400_and_bad_path_uid_is_400(tech_client):
    assert tech_client.get("/dicomweb/studies", {"Modality": "CT"}).status_code == 400
    assert tech_client.get("/dicomweb/studies/1..2/series").status_code == 400


def test_search_is_audited_as_query(tech_client):
    study = _study(patient_id="AUDQ1")
    assert tech_client.get("/dicomweb/studies", {"PatientID": "AUDQ1"}).status_code == 200
    record = AuditRecord.records.filter(event_id="110112").latest("id")
    assert record.actor == "tech"
    [asked] = [o["detail"] for o in record.objects if o["type"] == "query"]
    assert asked["PatientID"] == "AUDQ1" and asked["via"] == "session"
    assert list(record.patients.values_list("patient_id", "issuer")) == [("AUDQ1", "HOSP")]
    assert study.study_instance_uid  # the study searched for is the one listed


def test_denied_without_credentials_or_role(client):
    _study()
    anonymous = client.get("/dicomweb/studies")
    assert anonymous.status_code == 401 and "Token" in anonymous["WWW-Authenticate"]
    client.force_login(factories.user("privacy", "privacy_officer"))
    assert client.get("/dicomweb/studies").status_code == 403
    assert client.get("/dicomweb/studies", HTTP_AUTHORIZATION="Token not-a-token").status_code == 401
    assert client.post("/dicomweb/studies").status_code in (401, 405)


def test_signed_link_searches_its_study_only(client, settings):
    mine, other = _study(patient_id="LINK1"), _study(patient_id="LINK2")
    token = links.sign_study_link(mine.study_instance_uid)
    found = client.get("/dicomweb/studies", {"access_token": token})
    assert _uids(found) == {mine.study_instance_uid}
    assert client.get(f"/dicomweb/studies/{other.study_instance_uid}/series",
                      {"access_token": token}).status_code == 403
    by_header = client.get(f"/dicomweb/studies/{mine.study_instance_uid}/series",
                           HTTP_AUTHORIZATION=f"Bearer {token}")
    assert by_header.status_code == 200
    assert client.get("/dicomweb/studies", {"access_token": token[:-2] + "xx"}).status_code == 401
    alert = AuditRecord.records.filter(event_id="110113", event_type="110132").latest("id")
    assert alert.outcome == 8 and alert.detail["status"] == 401
    record = AuditRecord.records.filter(event_id="110112").latest("id")
    [asked] = [o["detail"] for o in record.objects if o["type"] == "query"]
    assert record.actor == "study-link" and asked["via"] == "link"


def test_signed_link_expires(client, settings):
    study = _study()
    settings.DICOMWEB_LINK_MAX_AGE_MINUTES = 5
    with time_machine.travel(timezone.now() - dt.timedelta(minutes=6), tick=False):
        token = links.sign_study_link(study.study_instance_uid)
    response = client.get("/dicomweb/studies", {"access_token": token})
    assert response.status_code == 401 and "expired" in response.json()["error"]


def test_dicomweb_link_command_prints_a_link_for_its_study(client, settings, capsys):
    study = _study()
    call_command("dicomweb_link", study.study_instance_uid, "--base", "https://pacs.example/dicomweb")
    link = capsys.readouterr().out.strip()
    assert link.startswith(f"https://pacs.example/dicomweb/studies/{study.study_instance_uid}?access_token=")
    token = link.split("access_token=", 1)[1]
    assert _uids(client.get("/dicomweb/studies", {"access_token": unquote(token)})) == {study.study_instance_uid}
    with pytest.raises(CommandError):
        call_command("dicomweb_link", "1.2.3.4.5")


def test_cors_for_declared_origins_only(tech_client, settings):
    settings.DICOMWEB_CORS_ORIGINS = ["https://viewer.example.org"]
    _study()
    allowed = tech_client.get("/dicomweb/studies", HTTP_ORIGIN="https://viewer.example.org")
    assert allowed["Access-Control-Allow-Origin"] == "https://viewer.example.org"
    preflight = tech_client.options("/dicomweb/studies", HTTP_ORIGIN="https://viewer.example.org")
    assert preflight.status_code == 204 and "Authorization" in preflight["Access-Control-Allow-Headers"]
    other = tech_client.get("/dicomweb/studies", HTTP_ORIGIN="https://elsewhere.example.org")
    assert "Access-Control-Allow-Origin" not in other


def test_not_acceptable_and_not_found(tech_client, settings, tmp_path):
    settings.STORAGE_DIR = tmp_path
    study = _study()
    assert tech_client.get("/dicomweb/studies", HTTP_ACCEPT="application/dicom+xml").status_code == 406
    assert tech_client.get(f"/dicomweb/studies/{study.study_instance_uid}",
                           HTTP_ACCEPT="application/zip").status_code == 406
    assert tech_client.get(f"/dicomweb/studies/{generate_uid()}").status_code == 404
    Study.objects.filter(pk=study.pk).update(purged_at=timezone.now())
    purged = tech_client.get(f"/dicomweb/studies/{study.study_instance_uid}/metadata")
    assert purged.status_code == 404 and "purged" in purged.json()["error"]


def test_search_finds_purged_studies_too_and_lists_studies_by_date(tech_client):
    later = _study(patient_id="ORD001", date=dt.date(2026, 5, 2))
    earlier = _study(patient_id="ORD002", date=dt.date(2026, 5, 1))
    purged = _study(patient_id="ORD003", date=dt.date(2026, 4, 1))
    Study.objects.filter(pk=purged.pk).update(purged_at=timezone.now())
    response = tech_client.get("/dicomweb/studies", {"PatientID": "ORD*"})
    # By StudyDate; the purged study is found from the index (a retrieval fetches it back).
    assert [item["0020000D"]["Value"][0] for item in response.json()] == [
        purged.study_instance_uid, earlier.study_instance_uid, later.study_instance_uid]
    series = tech_client.get(f"/dicomweb/studies/{purged.study_instance_uid}/series")
    assert series.status_code == 200 and len(series.json()) == 1


def test_lone_asterisk_uid_is_universal_and_empty_values_match_no_range(tech_client):
    dated = _study(patient_id="RNG001")
    undated = _study(patient_id="RNG002", time="")
    Study.objects.filter(pk=undated.pk).update(patient_birth_date="")

    def search(**params):
        return _uids(tech_client.get("/dicomweb/studies", {"PatientID": "RNG*", **params}))

    assert search(StudyInstanceUID="*") == {dated.study_instance_uid, undated.study_instance_uid}  # C.2.2.2.3
    assert search(PatientBirthDate="-19991231") == {dated.study_instance_uid}
    assert search(StudyTime="-235959") == {dated.study_instance_uid}


def test_patient_name_case_follows_the_setting(tech_client, settings):
    study = _study(patient_id="CASE01", name="TESTPERSON^CASE")
    assert _uids(tech_client.get("/dicomweb/studies", {"PatientName": "testperson^case"})) == {study.study_instance_uid}
    settings.QR_PATIENT_NAME_CASE_INSENSITIVE = False
    assert _uids(tech_client.get("/dicomweb/studies", {"PatientName": "testperson^case"})) == set()
    assert _uids(tech_client.get("/dicomweb/studies", {"PatientName": "TESTPERSON^C*"})) == {study.study_instance_uid}


def test_a_search_is_one_query_of_the_index(tech_client):
    for n in range(3):
        _study(patient_id=f"ONEQ{n}", modalities=("CT", "MR"), instances=2)
    for path, params in (("/dicomweb/studies", {"ModalitiesInStudy": "MR", "includefield": "all"}),
                         ("/dicomweb/series", {"Modality": "CT", "includefield": "all"}),
                         ("/dicomweb/instances", {"PatientID": "ONEQ*", "includefield": "all"})):
        with CaptureQueriesContext(connection) as queries:
            response = tech_client.get(path, params)
        assert response.status_code == 200 and len(response.json()) >= 3, path
        index = [q["sql"] for q in queries.captured_queries if '"pacs_study"' in q["sql"]]
        assert len(index) == 1, (path, index)
