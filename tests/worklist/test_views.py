"""The reading worklist pages through Django's test client on PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from project.access import ADMINISTRATOR, RADIOLOGIST, RESIDENT, TECHNOLOGIST
from ris.models import ReportTemplate, ReportVersion
from tests.factories import reading as f
from worklist import selectors, services
from worklist.models import ReadingClaim, SavedFilter


def _login(client, user):
    client.force_login(user)
    return client


def _accessions(response) -> list[str]:
    import re

    return re.findall(r'data-accession="([^"]+)"', response.content.decode())


@pytest.mark.django_db
def test_list_sorted_stat_first_then_longest_waiting(client):
    now = timezone.now()
    routine_old = f.study(priority="ROUTINE", ready_at=now - dt.timedelta(hours=5))
    stat_new = f.study(priority="STAT", ready_at=now - dt.timedelta(minutes=1))
    stat_old = f.study(priority="STAT", ready_at=now - dt.timedelta(minutes=30))
    high = f.study(priority="HIGH", ready_at=now - dt.timedelta(hours=1))
    f.study(ready=False)  # not ready: not listed
    _login(client, f.user("tech", TECHNOLOGIST))
    r = client.get(reverse("worklist:list"))
    assert r.status_code == 200
    assert _accessions(r) == [x.accession_number for x in (stat_old, stat_new, high, routine_old)]


@pytest.mark.django_db
def test_filters_modality_priority_status_dates_text(client):
    now = timezone.now()
    ct = f.study(modality="CT", patient_name="DOE^JANE", ready_at=now - dt.timedelta(days=3))
    mr = f.study(modality="MR", priority="STAT", patient_name="ROE^RICHARD")
    done = f.study(modality="CT")
    services.set_report_status(done.pk, "FINAL")
    _login(client, f.user("rad", RADIOLOGIST))
    url = reverse("worklist:list")
    assert _accessions(client.get(url, {"modality": "MR"})) == [mr.accession_number]
    assert _accessions(client.get(url, {"priority": "STAT"})) == [mr.accession_number]
    assert _accessions(client.get(url)) == [mr.accession_number, ct.accession_number]  # final ones hidden
    assert _accessions(client.get(url, {"status": "FINAL"})) == [done.accession_number]
    assert len(_accessions(client.get(url, {"status": "ALL"}))) == 3
    assert _accessions(client.get(url, {"q": "doe"})) == [ct.accession_number]
    assert _accessions(client.get(url, {"q": "doe^ja"})) == [ct.accession_number]
    assert _accessions(client.get(url, {"q": mr.accession_number})) == [mr.accession_number]
    pid = mr.order.patient.identifiers.get().id_number
    assert _accessions(client.get(url, {"q": pid})) == [mr.accession_number]
    day = (now - dt.timedelta(days=3)).date().isoformat()
    assert _accessions(client.get(url, {"date_from": day, "date_to": day})) == [ct.accession_number]
    bad = client.get(url, {"date_from": "yesterday", "priority": "URGENT"})
    assert bad.status_code == 200 and b"is not a date" in bad.content and b"unknown priority" in bad.content


@pytest.mark.django_db
def test_keyset_pagination_and_partial_refresh_keep_the_place(client):
    now = timezone.now()
    studies = [f.study(ready_at=now - dt.timedelta(minutes=200 - i)) for i in range(7)]
    _login(client, f.user("rad", RADIOLOGIST))
    page1 = selectors.reading_page(selectors.ListFilters(), page_size=3)
    assert [r.pk for r in page1.rows] and page1.next_cursor and not page1.prev_cursor
    page2 = selectors.reading_page(selectors.ListFilters(), after=page1.next_cursor, page_size=3)
    # A STAT study arriving meanwhile goes to the top but does not shift page 2.
    f.study(priority="STAT")
    page2_again = selectors.reading_page(selectors.ListFilters(), after=page1.next_cursor, page_size=3)
    assert [r.pk for r in page2.rows] == [r.pk for r in page2_again.rows]
    back = selectors.reading_page(selectors.ListFilters(), before=page2.prev_cursor, page_size=3)
    assert [r.accession_number for r in back.rows] == [s.accession_number for s in studies[:3]]
    r = client.get(reverse("worklist:list"), {"partial": "1", "after": page1.next_cursor})
    assert r.status_code == 200 and b"<html" not in r.content
    assert _accessions(r)[:3] == [s.accession_number for s in studies[3:6]]


@pytest.mark.django_db
def test_saved_filters_are_per_user(client):
    rad, other = f.user("rad", RADIOLOGIST), f.user("rad2", RADIOLOGIST)
    _login(client, rad)
    r = client.post(reverse("worklist:save_filter"), {"name": "My CTs", "modality": "CT", "priority": "STAT"})
    assert r.status_code == 302
    saved = SavedFilter.objects.get(user=rad)
    assert saved.query == "modality=CT&priority=STAT"
    assert b"My CTs" in client.get(reverse("worklist:list")).content
    _login(client, other)
    assert b"My CTs" not in client.get(reverse("worklist:list")).content
    client.post(reverse("worklist:delete_filter", args=[saved.pk]))  # not theirs: nothing happens
    assert SavedFilter.objects.filter(pk=saved.pk).exists()


def _start_reading(client, rp):
    """The "Start reading" button: a POST, then the study page it redirects to."""
    r = client.post(reverse("worklist:claim", args=[rp.pk]))
    assert r.status_code == 302 and r["Location"] == reverse("worklist:study", args=[rp.pk])
    return client.get(r["Location"])


@pytest.mark.django_db
def test_a_get_claims_nothing_and_a_cross_site_post_is_refused(settings):
    """Opening a study (a link from anywhere) claims nothing; the claim is a POST that carries the
    CSRF token, so a form on another site that posts to it is refused (403) and claims nothing."""
    from django.test import Client

    rp = f.study()
    rad = f.user("rad_csrf", RADIOLOGIST)
    browser = Client(enforce_csrf_checks=True)
    _login(browser, rad)
    page = browser.get(reverse("worklist:study", args=[rp.pk]))
    assert page.status_code == 200 and b'id="start-reading"' in page.content
    assert services.active_claim(rp.pk) is None and not ReadingClaim.objects.exists()
    assert browser.get(reverse("worklist:claim", args=[rp.pk])).status_code == 405
    forged = browser.post(reverse("worklist:claim", args=[rp.pk]), HTTP_ORIGIN="https://elsewhere.example")
    assert forged.status_code == 403 and not ReadingClaim.objects.exists()
    without_token = browser.post(reverse("worklist:claim", args=[rp.pk]))
    assert without_token.status_code == 403 and not ReadingClaim.objects.exists()
    token = browser.cookies["csrftoken"].value
    claimed = browser.post(reverse("worklist:claim", args=[rp.pk]), {"csrfmiddlewaretoken": token})
    assert claimed.status_code == 302 and services.active_claim(rp.pk).user == rad


@pytest.mark.django_db
def test_open_claims_second_reader_read_only_and_admin_force_release(client, settings):
    settings.VIEWER_URL_TEMPLATE = "https://viewer.example/ohif/viewer?StudyInstanceUIDs={StudyInstanceUID}"
    rp = f.study()
    a = f.user("rad_a", RADIOLOGIST, first_name="Ann", last_name="Alpha")
    b = f.user("rad_b", RADIOLOGIST)
    _login(client, a)
    r = client.get(reverse("worklist:study", args=[rp.pk]))
    assert b'id="start-reading"' in r.content and b'id="report-editor"' not in r.content
    assert services.active_claim(rp.pk) is None  # opening a study claims nothing
    r = _start_reading(client, rp)
    assert b'id="report-editor"' in r.content
    assert f"StudyInstanceUIDs={rp.study_instance_uid}".encode() in r.content
    assert b"Ann Alpha" in client.get(reverse("worklist:list")).content  # claimed-by column
    _login(client, b)
    r = client.get(reverse("worklist:study", args=[rp.pk]))
    assert b'id="start-reading"' not in r.content
    r = _start_reading(client, rp)
    assert b'id="report-editor"' not in r.content and b"Claimed by <strong>Ann Alpha" in r.content
    assert client.post(reverse("worklist:autosave", args=[rp.pk]), {"findings": "x"}).status_code == 409
    r = client.post(reverse("worklist:sign", args=[rp.pk]), {"kind": "FINAL", "findings": "x"})
    assert not ReportVersion.objects.filter(signed_at__isnull=False).exists()
    assert client.post(reverse("worklist:release", args=[rp.pk]), {"force": "1"}).status_code == 302
    assert services.active_claim(rp.pk).user == a  # a radiologist cannot force
    _login(client, f.user("adm", ADMINISTRATOR))
    r = client.get(reverse("worklist:study", args=[rp.pk]))
    assert b'id="force-release"' in r.content
    client.post(reverse("worklist:release", args=[rp.pk]), {"force": "1"})
    assert services.active_claim(rp.pk) is None
    assert ReadingClaim.objects.get(requested_procedure=rp).release_reason == "FORCED"


@pytest.mark.django_db
def test_autosave_then_sign_final_in_the_browser_flow(client):
    ReportTemplate.objects.create(name="CT head", procedure_code_value="CTHEAD", findings="Template findings.")
    rp = f.study(code="CTHEAD")
    rad = f.user("rad", RADIOLOGIST, first_name="Rita", last_name="Reader")
    _login(client, rad)
    r = _start_reading(client, rp)
    assert b"Template findings." in r.content
    r = client.post(reverse("worklist:autosave", args=[rp.pk]), {"findings": "Autosaved.", "impression": "Imp."})
    assert r.status_code == 200 and r.json()["saved"]
    draft = ReportVersion.objects.get(report__requested_procedure=rp)
    assert (draft.findings, draft.signed_at) == ("Autosaved.", None)
    r = client.post(reverse("worklist:sign", args=[rp.pk]), {
        "kind": "FINAL", "findings": "Final text.", "impression": "Normal.", "critical_result": "on",
        "critical_communicated_to": "Dr Ward", "critical_communicated_at": "2026-11-26T10:15"})
    assert r.status_code == 302 and r["Location"] == reverse("worklist:list")
    v = ReportVersion.objects.get(report__requested_procedure=rp)
    assert (v.kind, v.result_status, v.signer_name, v.critical_communicated_to) == ("FINAL", "F", "Reader^Rita",
                                                                                    "Dr Ward")
    assert timezone.localtime(v.critical_communicated_at).strftime("%Y-%m-%dT%H:%M") == "2026-11-26T10:15"
    r = client.get(reverse("worklist:study", args=[rp.pk]))
    assert b"Final text." in r.content and b'id="start-addendum"' not in r.content  # signing released it
    r = _start_reading(client, rp)  # an addendum is written under a claim too
    assert b'id="start-addendum"' in r.content


@pytest.mark.django_db
def test_resident_sees_no_final_button_and_technologist_reads_only(client):
    rp = f.study()
    _login(client, f.user("res", RESIDENT))
    r = _start_reading(client, rp)
    assert b'value="PRELIMINARY"' in r.content and b'value="FINAL"' not in r.content
    services.release_claim(rp.pk, r.wsgi_request.user)
    _login(client, f.user("tech", TECHNOLOGIST))
    r = client.get(reverse("worklist:study", args=[rp.pk]))
    assert r.status_code == 200 and b'id="report-editor"' not in r.content and b'id="start-reading"' not in r.content
    assert services.active_claim(rp.pk) is None  # a technologist's view claims nothing
    assert client.post(reverse("worklist:claim", args=[rp.pk])).status_code == 403
    assert client.post(reverse("worklist:sign", args=[rp.pk]), {"kind": "PRELIMINARY"}).status_code == 403


@pytest.mark.django_db
def test_templates_maintained_by_administrators(client):
    _login(client, f.user("rad", RADIOLOGIST))
    assert client.get(reverse("worklist:templates")).status_code == 403
    _login(client, f.user("adm", ADMINISTRATOR))
    r = client.post(reverse("worklist:template_new"), {"name": "MR knee", "procedure_code_value": "MRKNEE",
                                                        "findings": "Menisci: intact.", "active": "on"})
    assert r.status_code == 302
    t = ReportTemplate.objects.get(name="MR knee")
    r = client.post(reverse("worklist:template_edit", args=[t.pk]), {"name": "MR knee", "findings": "Changed.",
                                                                      "procedure_code_value": "MRKNEE"})
    t.refresh_from_db()
    assert t.findings == "Changed." and not t.active
    assert b"MR knee" in client.get(reverse("worklist:templates")).content


@pytest.mark.django_db
def test_anonymous_is_sent_to_login(client):
    r = client.get(reverse("worklist:list"))
    assert r.status_code == 302 and r["Location"].startswith("/accounts/login/")


def test_viewer_url_template_placeholders(settings, tmp_path):
    settings.VIEWER_DIR = tmp_path  # no built-in viewer installed there
    item = type("Item", (), {"study_instance_uid": "1.2.3", "accession_number": "A 1", "patient_id": "P/1"})()
    settings.VIEWER_URL_TEMPLATE = "https://v.example/{StudyInstanceUID}?acc={accession_number}&pid={PatientID}"
    assert selectors.viewer_url(item) == "https://v.example/1.2.3?acc=A%201&pid=P%2F1"
    settings.VIEWER_URL_TEMPLATE = "https://v.example/{Unknown}"
    assert selectors.viewer_url(item) == ""
    settings.VIEWER_URL_TEMPLATE = ""
    assert selectors.viewer_url(item) == ""


@pytest.mark.django_db
def test_garbage_cursor_gives_the_first_page(client):
    rp = f.study()
    _login(client, f.user("rad", RADIOLOGIST))
    for bad in ("garbage", "1.2", "9.99999999999999999999.1", "-1.-1.-1"):
        r = client.get(reverse("worklist:list"), {"after": bad})
        assert r.status_code == 200, bad
    assert _accessions(client.get(reverse("worklist:list"), {"after": "garbage"})) == [rp.accession_number]


@pytest.mark.django_db
def test_patient_rename_reaches_the_list():
    rp = f.study(patient_name="OLD^NAME")
    patient = rp.order.patient
    patient.patient_name = "NEW^NAME"
    patient.save()
    assert services.refresh_reading_items_for_patient(patient.pk) == 1
    assert [r.patient_name for r in selectors.reading_page(selectors.ListFilters()).rows] == ["NEW^NAME"]
    assert selectors.reading_page(selectors.ListFilters(q="new")).rows
