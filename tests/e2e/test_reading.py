"""The radiologists' side in a real browser: login, the reading worklist, the claim race ("Start reading"), signing
a final report -- and the ORU^R01 arriving at an MLLP sink through a real Celery worker."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from hl7gateway.models import OutboundDestination, OutboundMessage
from project.access import RADIOLOGIST
from ris.models import ReportVersion
from tests.factories import reading as f
from tests.support.browser import login
from tests.support.celery_worker import oru_worker
from tests.support.mllp_sink import MLLPSink
from tests.support.waiting import wait_until
from worklist.models import ReadingClaim

pytestmark = [pytest.mark.django_db(transaction=True)]


def _accessions(page) -> list[str]:
    return page.locator("#reading-rows tr[data-accession]").evaluate_all(
        "rows => rows.map(r => r.getAttribute('data-accession'))")


def test_login_and_worklist_sorted_stat_first(live_server, new_page):
    now = timezone.now()
    routine = f.study(priority="ROUTINE", ready_at=now - dt.timedelta(hours=3), patient_name="ROUTINE^OLD")
    stat = f.study(priority="STAT", ready_at=now - dt.timedelta(minutes=5), patient_name="STAT^NEW")
    high = f.study(priority="HIGH", ready_at=now - dt.timedelta(hours=1), patient_name="HIGH^MID")
    f.user("rad1", RADIOLOGIST)
    page = new_page()
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", "rad1")
    page.fill("input[name=password]", "wrong password")
    page.click("button[type=submit]")
    assert "/accounts/login/" in page.url  # a wrong password does not get in
    login(page, live_server, "rad1")
    assert _accessions(page) == [stat.accession_number, high.accession_number, routine.accession_number]
    assert page.locator("#reading-rows tr[data-accession] td.stat").first.inner_text() == "STAT"
    # A STAT study arriving later goes to the top on the next self-refresh, without a page load.
    newer = f.study(priority="STAT", patient_name="STAT^LATER")
    page.evaluate("window.readingWorklistRefresh()")
    page.wait_for_function("() => document.querySelectorAll('#reading-rows tr[data-accession]').length === 4")
    assert _accessions(page)[:2] == [stat.accession_number, newer.accession_number]
    # Filter by free text.
    page.fill("input[name=q]", "HIGH")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**q=HIGH**")
    assert _accessions(page) == [high.accession_number]


def test_two_radiologists_race_for_one_study(live_server, new_page):
    rp = f.study(priority="STAT", patient_name="RACE^CASE")
    f.user("rad_a", RADIOLOGIST, first_name="Ann", last_name="Alpha")
    f.user("rad_b", RADIOLOGIST, first_name="Bob", last_name="Beta")
    a, b = login(new_page(), live_server, "rad_a"), login(new_page(), live_server, "rad_b")
    url = f"{live_server.url}/reading/studies/{rp.pk}/"
    # Both open the study: a GET shows it read-only and claims nothing.
    for page in (a, b):
        page.goto(url)
        assert page.locator("#start-reading").count() == 1 and page.locator("textarea").count() == 0
    assert not ReadingClaim.objects.filter(requested_procedure=rp).exists()
    # Both press "Start reading" at the same moment (clicks fired back to back, not awaited).
    a.evaluate("() => document.getElementById('start-reading').click()")
    b.evaluate("() => document.getElementById('start-reading').click()")
    for page in (a, b):
        page.wait_for_selector("#report-editor, #claimed-by")
    editors = [p.locator("#report-editor").count() for p in (a, b)]
    assert sorted(editors) == [0, 1], editors  # exactly one got the editor
    winner, loser = (a, b) if editors[0] else (b, a)
    winner_name = "Ann Alpha" if winner is a else "Bob Beta"
    assert loser.locator("#claimed-by").inner_text().startswith(f"Claimed by {winner_name}")
    assert loser.locator("textarea").count() == 0  # read-only
    assert ReadingClaim.objects.filter(requested_procedure=rp, released_at__isnull=True).count() == 1
    # The list shows who holds it.
    loser.goto(f"{live_server.url}/")
    assert loser.locator(f"tr[data-accession='{rp.accession_number}'] td.claim").inner_text() == winner_name
    # The winner releases; the other can now claim it.
    winner.click("#release")
    winner.wait_for_url(f"{live_server.url}/")
    loser.goto(url)
    loser.click("#start-reading")
    loser.wait_for_selector("#report-editor")


def test_sign_final_report_and_oru_reaches_the_sink(live_server, new_page, tmp_path, broker, settings):
    settings.VIEWER_URL_TEMPLATE = "https://viewer.example/viewer?StudyInstanceUIDs={study_instance_uid}"
    rp = f.study(priority="STAT", patient_name="SIGNED^SAM", description="CT CHEST")
    f.user("rad_s", RADIOLOGIST, first_name="Sara", last_name="Signer")
    with MLLPSink() as sink:
        OutboundDestination.objects.create(name="ehr", host="127.0.0.1", port=sink.port)
        worker = oru_worker(tmp_path, "h3e2e").start()
        try:
            page = login(new_page(), live_server, "rad_s")
            page.click(f"tr[data-accession='{rp.accession_number}'] a")
            page.click("#start-reading")
            page.wait_for_selector("#report-editor")
            assert rp.study_instance_uid in page.locator("#viewer-link").get_attribute("href")
            page.fill("textarea[name=findings]", "No pulmonary embolism.\nLungs clear | no effusion.")
            page.fill("textarea[name=impression]", "Normal CT chest.")
            page.wait_for_selector("#autosave-status:has-text('Draft saved')")
            assert ReportVersion.objects.get(report__requested_procedure=rp).findings.startswith("No pulmonary")
            page.click("button[value=FINAL]")
            page.wait_for_url(f"{live_server.url}/")
            assert "Signed final" in page.content()
            version = ReportVersion.objects.get(report__requested_procedure=rp)
            assert (version.kind, version.result_status, version.signer_name) == ("FINAL", "F", "Signer^Sara")
            wait_until(lambda: OutboundMessage.objects.filter(status="DELIVERED").count() == 1, 60, "ORU delivered",
                  worker)
        finally:
            worker.stop()
        assert sink.count == 1
        msg = sink.received[0]
        assert msg.segment("MSH")[9].startswith("ORU^R01")
        obr = msg.segment("OBR")
        assert obr[18] == rp.accession_number and obr[25] == "F" and obr[24] == "RAD"
        assert "Signer" in obr[32]
        pid3 = msg.segment("PID")[3]
        assert pid3.startswith(rp.order.patient.identifiers.get().id_number)
        obx = [s for s in msg.segments() if s[0] == "OBX"]
        assert all(s[11] == "F" for s in obx)
        text = " ".join(s[5] for s in obx)
        assert "No pulmonary embolism." in text and "Lungs clear \\F\\ no effusion." in text  # '|' escaped
        assert any(rp.study_instance_uid in s[5] for s in obx)
    # The study now shows the signed version in its history.
    page.goto(f"{live_server.url}/reading/studies/{rp.pk}/")
    assert page.locator("#report-history li[data-result-status=F]").count() == 1
