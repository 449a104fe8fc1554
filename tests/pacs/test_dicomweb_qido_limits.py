"""QIDO-RS over HTTP when more studies match than one answer may hold (PS3.18 8.3.4.2, 8.3.4.4):
at most DICOMWEB_QIDO_MAX_RESULTS per answer whatever ``limit`` asks, a Warning header (299)
saying that more can be asked for, no Warning on the last page; a real client (dicomweb-client,
``get_remaining``) pages through every match once."""

from __future__ import annotations

import datetime as dt

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from django.utils import timezone

from audit.models import AuditRecord
from pacs.models import Instance, Series, Study
from project.access import RADIOLOGIST
from tests import factories
from worklist.models import ApiToken

pytestmark = [pytest.mark.socket, pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]

KEY = "qido-limits-token-0123456789abcdef"
CT = "1.2.840.10008.5.1.4.1.1.2"
MATCHES, MAX_RESULTS = 250, 100
MORE = '"There are additional results that can be requested."'


@pytest.fixture
def many(live_server, settings):
    """MATCHES studies of one patient (one series, one instance each) in the index."""
    settings.DICOMWEB_QIDO_MAX_RESULTS = MAX_RESULTS
    settings.DICOMWEB_BASE_URL = f"{live_server.url}/dicomweb"
    now = timezone.now()
    studies = Study.objects.bulk_create(
        [
            Study(
                study_instance_uid=f"2.25.7700{n:05d}",
                accession_number=f"LIM{n:05d}",
                patient_id="LIM001",
                issuer_of_patient_id="HOSP",
                patient_name="TESTPERSON^LIMIT",
                study_date=dt.date(2026, 1, 1) + dt.timedelta(days=n),
                study_time="101500",
                modalities_in_study="CT",
                last_received_at=now,
            )
            for n in range(MATCHES)
        ]
    )
    series = Series.objects.bulk_create(
        [
            Series(study=s, series_instance_uid=f"{s.study_instance_uid}.1", modality="CT", series_number=1)
            for s in studies
        ]
    )
    Instance.objects.bulk_create(
        [
            Instance(
                study=se.study,
                series=se,
                sop_instance_uid=f"{se.series_instance_uid}.1",
                sop_class_uid=CT,
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                instance_number=1,
                path=f"x/{se.pk}.dcm",
                size=1,
                received_at=now,
            )
            for se in series
        ]
    )
    user = factories.user("limits", RADIOLOGIST)
    ApiToken.objects.create(user=user, name="limits", key_sha256=ApiToken.digest(KEY))
    with requests.Session() as session:
        session.headers["Authorization"] = f"Token {KEY}"
        yield {
            "url": f"{live_server.url}/dicomweb",
            "session": session,
            "uids": [s.study_instance_uid for s in studies],
        }


def _get(many, **params):
    return many["session"].get(
        f"{many['url']}/studies",
        params={"PatientID": "LIM001", **params},
        headers={"Accept": "application/dicom+json"},
        timeout=60,
    )


def _uids(response) -> list[str]:
    return [item["0020000D"]["Value"][0] for item in response.json()]


def test_an_answer_holds_at_most_the_maximum_and_warns_that_more_can_be_asked_for(many):
    unbounded = _get(many)  # no limit
    assert unbounded.status_code == 200 and len(_uids(unbounded)) == MAX_RESULTS
    assert unbounded.headers["Warning"].startswith("299 ") and MORE in unbounded.headers["Warning"]

    lowered = _get(many, limit=str(MATCHES * 10))  # a limit above the maximum is lowered to it
    assert len(_uids(lowered)) == MAX_RESULTS and MORE in lowered.headers["Warning"]
    assert _uids(lowered) == _uids(unbounded)

    small = _get(many, limit="7", offset="3")
    assert len(_uids(small)) == 7 and MORE in small.headers["Warning"]

    last = _get(many, offset=str(MATCHES - 50))
    assert len(_uids(last)) == 50 and "Warning" not in last.headers
    exact = _get(many, limit=str(MAX_RESULTS), offset=str(MATCHES - MAX_RESULTS))
    assert len(_uids(exact)) == MAX_RESULTS and "Warning" not in exact.headers  # nothing after it
    assert _get(many, offset=str(MATCHES)).status_code == 204


def test_a_client_pages_through_every_match_once(many):
    client = DICOMwebClient(url=many["url"], session=many["session"])
    found = client.search_for_studies(search_filters={"PatientID": "LIM001"}, get_remaining=True)
    uids = [item["0020000D"]["Value"][0] for item in found]
    assert len(uids) == MATCHES and set(uids) == set(many["uids"])


def test_a_search_held_up_longer_than_the_timeout_is_cancelled_and_answered_503(many, settings):
    """Another client holds the study table (an ACCESS EXCLUSIVE lock, as a long migration or
    VACUUM FULL would): the search is cancelled after DICOMWEB_QIDO_TIMEOUT_SECONDS and answered
    503 with Retry-After, instead of holding its web worker; once the table is free it answers."""
    import time

    import psycopg

    from tests.support.postgres import conninfo

    settings.DICOMWEB_QIDO_TIMEOUT_SECONDS = 1.0
    with psycopg.connect(conninfo()) as other:
        other.execute(f"LOCK TABLE {Study._meta.db_table} IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        held_up = _get(many, limit="5")
        took = time.monotonic() - started
        other.rollback()
    assert held_up.status_code == 503, held_up.text
    assert "longer than 1 s" in held_up.json()["error"] and held_up.headers["Retry-After"] == "10"
    assert 0.9 < took < 10
    # The search that was run and cancelled is on the audit trail: a Query (DCM 110112) that
    # failed (outcome 8), with what was asked, by whom, and nobody listed.
    failed = AuditRecord.records.filter(event_id="110112", outcome=8)
    assert failed.count() == 1
    record = failed.get()
    [asked] = [o["detail"] for o in record.objects if o["type"] == "query"]
    assert record.actor == "limits" and asked["PatientID"] == "LIM001" and asked["level"] == "STUDY"
    assert record.detail["shown"] == 0 and not record.patients.exists()
    free = _get(many, limit="5")
    assert free.status_code == 200 and len(_uids(free)) == 5
    answered = AuditRecord.records.filter(event_id="110112").latest("id")
    assert answered.outcome == 0 and answered.detail["shown"] == 5
