"""The privacy officer's side in a real browser: sign in, "who saw patient X", the radiologist
who opened the patient's study is there, and the officer's own look is on the trail."""

from __future__ import annotations

import pytest

from audit import trail
from audit.models import AuditRecord
from project.access import PRIVACY_OFFICER, RADIOLOGIST
from project.auditing import events
from tests.factories import reading as f
from tests.support.browser import login

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_privacy_officer_sees_who_saw_a_patient(live_server, new_page):
    rp = f.study(priority="STAT", patient_name="AUDIT^SUBJECT")
    other = f.study(patient_name="OTHER^PATIENT")
    identifier = rp.order.patient.identifiers.get()
    f.user("rad_seen", RADIOLOGIST, first_name="Rhea", last_name="Seen")
    f.user("rad_elsewhere", RADIOLOGIST)
    f.user("priv1", PRIVACY_OFFICER)

    # The radiologist signs in and opens the study in the browser.
    rad = login(new_page(), live_server, "rad_seen")
    rad.goto(f"{live_server.url}/reading/studies/{rp.pk}/")
    assert rp.accession_number in rad.content()
    # The study page's read, as the study view records it (PS3.15 A.5.3.15 Procedure Record, R),
    # and another radiologist's read of another patient.
    trail.record(events.PROCEDURE_RECORD, action=events.READ, actor="rad_seen", actor_kind=events.USER,
                 source_address="127.0.0.1", patients=[(identifier.id_number, identifier.assigning_authority)],
                 objects=[{"type": "study", "id": rp.study_instance_uid}])
    other_id = other.order.patient.identifiers.get()
    trail.record(events.PROCEDURE_RECORD, action=events.READ, actor="rad_elsewhere", actor_kind=events.USER,
                 patients=[(other_id.id_number, other_id.assigning_authority)])

    # The privacy officer signs in (the audit page is the only page a privacy officer may open).
    page = new_page()
    page.goto(f"{live_server.url}/audit/")
    assert "/accounts/login/" in page.url
    page.fill("input[name=username]", "priv1")
    page.fill("input[name=password]", "pw-For-Tests-1")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/audit/")
    assert page.locator("#chain-status").count() == 1
    page.click("text=Who saw a patient")
    page.fill("#who-saw-form input[name=patient_id]", identifier.id_number)
    page.fill("#who-saw-form input[name=issuer]", identifier.assigning_authority)
    page.click("#who-saw-form button[type=submit]")
    page.wait_for_url("**/audit/who-saw/?**")
    actors = page.locator("#who-saw-actors .actor").all_inner_texts()
    # The radiologist, not the other one; the officer too, whose search just showed the patient's ID.
    assert "rad_seen" in actors and "rad_elsewhere" not in actors
    seen_row = page.locator("#who-saw-rows tr[data-record]", has_text="rad_seen").first
    row = seen_row.inner_text()
    assert "rad_seen" in row and "127.0.0.1" in row and "Procedure Record" in row and rp.study_instance_uid in row
    # The record itself, one click away.
    seen_row.locator("a").first.click()
    page.wait_for_url("**/audit/records/**")
    assert rp.study_instance_uid in page.locator("#audit-record").inner_text()
    # The officer's sign-in and look are on the trail too.
    assert trail.flush(timeout=30)
    assert AuditRecord.records.filter(event_id=events.USER_AUTHENTICATION.value, actor="priv1", outcome=0).exists()
    looks = AuditRecord.records.filter(event_id=events.AUDIT_LOG_USED.value, actor="priv1", action="R")
    assert any(r.detail.get("view") == "who_saw" and r.detail["criteria"]["patient_id"] == identifier.id_number
               for r in looks)
