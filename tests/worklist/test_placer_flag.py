"""The reading worklist's flag for an order the EHR cancelled or discontinued (ORC-1 CA / DC), fed
through the HL7 intake: shown on the list and the study page, a FINAL signature in the browser
refused without the confirmation checkbox and signed with it, a preliminary signature not held
back; a cancel before the exam still cancels it and flags the study; a DC flags without a credit;
the dictation API refuses a confirmation that is not a boolean."""

from __future__ import annotations

import datetime as dt
import json
import secrets

import pytest
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditRecord
from hl7gateway.intake import handle_payload
from hl7gateway.models import OutboundMessage
from pacs.services import completion
from project.access import RADIOLOGIST, RESIDENT
from project.auditing import events
from ris.models import Report, RequestedProcedure
from tests.factories import oru as h
from tests.factories import reading, received_study
from tests.support.hl7 import ack_fields, fixture
from worklist import services
from worklist.models import ApiToken, ReadingItem

pytestmark = pytest.mark.django_db


def applied(name: str) -> None:
    assert ack_fields(handle_payload(fixture(name)))["msa_1"] == "AA"


def on_reading_worklist(*, performed: bool) -> RequestedProcedure:
    """EA100001 of epic_orm_o01_nw.hl7 on the reading worklist (its images complete after the quiet
    period), performed (XO/CM from the EHR: steps and procedure COMPLETED) or not."""
    applied("epic_orm_o01_nw.hl7")
    if performed:
        applied("epic_orm_o01_xo_cm.hl7")
    rp = RequestedProcedure.objects.get(accession_number="EA100001")
    received_study(rp, last_received_at=timezone.now() - dt.timedelta(hours=1))
    assert completion.sweep_quiet_studies() == 1
    assert ReadingItem.objects.filter(requested_procedure=rp, placer_status="").exists()
    return rp


@pytest.fixture
def rad(client):
    user = reading.user("rad", RADIOLOGIST, first_name="Rita", last_name="Reader")
    client.force_login(user)
    return user


def sign_in_browser(client, rp, **extra):
    return client.post(reverse("worklist:sign", args=[rp.pk]),
                       {"kind": "FINAL", "findings": "No bleed.", "impression": "Normal.", **extra})


def test_the_browser_refuses_final_without_the_checkbox_and_signs_with_it(client, rad):
    rp = on_reading_worklist(performed=True)
    applied("epic_orm_o01_ca.hl7")
    flag = f"order cancelled by the EHR on {timezone.localdate().isoformat()}"
    services.claim_study(rp.pk, rad)
    page = client.get(reverse("worklist:study", args=[rp.pk])).content.decode()
    assert 'id="placer-flag"' in page and f"Order cancelled by the EHR on {timezone.localdate().isoformat()}" in page
    assert 'name="confirm_cancelled"' in page

    refused = sign_in_browser(client, rp)
    assert refused.status_code == 302 and refused.url == reverse("worklist:study", args=[rp.pk])
    [message] = [str(m) for m in get_messages(refused.wsgi_request)]
    assert flag in message and "confirmation" in message
    assert Report.objects.get(requested_procedure=rp).status == "DRAFT"

    signed = sign_in_browser(client, rp, confirm_cancelled="on")
    assert signed.status_code == 302 and signed.url == reverse("worklist:list")
    assert Report.objects.get(requested_procedure=rp).status == "FINAL"
    record = AuditRecord.records.get(event_id=events.PROCEDURE_RECORD.value, actor="rad", detail__signed="FINAL")
    assert record.detail["confirmed_placer_status"] == "CANCELED" and record.detail["source"] == "browser"


def test_a_study_without_a_flag_signs_final_without_a_confirmation(client, rad):
    rp = on_reading_worklist(performed=True)
    services.claim_study(rp.pk, rad)
    page = client.get(reverse("worklist:study", args=[rp.pk])).content.decode()
    assert 'id="placer-flag"' not in page and 'name="confirm_cancelled"' not in page
    assert sign_in_browser(client, rp).url == reverse("worklist:list")
    record = AuditRecord.records.get(event_id=events.PROCEDURE_RECORD.value, actor="rad", detail__signed="FINAL")
    assert "confirmed_placer_status" not in record.detail


def test_a_preliminary_signature_is_not_held_back(client):
    resident = reading.user("res", RESIDENT)
    rp = on_reading_worklist(performed=True)
    applied("epic_orm_o01_ca.hl7")
    h.sign_report(rp, resident, "PRELIMINARY")
    assert Report.objects.get(requested_procedure=rp).status == "PRELIMINARY"


def test_a_cancel_before_the_exam_cancels_it_and_flags_the_study(client, rad):
    h.destination("billing", 2576, sends_charges=True)
    rp = on_reading_worklist(performed=False)  # the images are complete, no MPPS, the order still SCHEDULED
    [charge] = OutboundMessage.objects.filter(kind="CHARGE", requested_procedure=rp)
    applied("epic_orm_o01_ca.hl7")
    rp.refresh_from_db()
    assert (rp.status, rp.steps.get().status, rp.placer_status) == ("CANCELED", "CANCELED", "CANCELED")
    assert ReadingItem.objects.get(requested_procedure=rp).placer_status == "CANCELED"
    assert 'data-placer-status="CANCELED"' in client.get(reverse("worklist:list")).content.decode()
    credits = OutboundMessage.objects.filter(kind="CHARGE", requested_procedure=rp, transaction_type="CD")
    assert [c.transaction_id for c in credits] == [charge.transaction_id]  # once, for both changes


def test_a_discontinue_after_the_exam_flags_it_and_keeps_the_charge(client, rad):
    h.destination("billing", 2576, sends_charges=True)
    rp = on_reading_worklist(performed=True)
    applied("epic_orm_o01_dc.hl7")
    rp.refresh_from_db()
    assert (rp.status, rp.placer_status) == ("COMPLETED", "DISCONTINUED")
    page = client.get(reverse("worklist:list")).content.decode()
    assert 'data-placer-status="DISCONTINUED"' in page
    assert f"Order discontinued by the EHR on {timezone.localdate().isoformat()}" in page
    assert not OutboundMessage.objects.filter(kind="CHARGE", transaction_type="CD").exists()
    services.claim_study(rp.pk, rad)
    assert sign_in_browser(client, rp).url == reverse("worklist:study", args=[rp.pk])  # refused: no confirmation
    assert sign_in_browser(client, rp, confirm_cancelled="on").url == reverse("worklist:list")
    assert Report.objects.get(requested_procedure=rp).status == "FINAL"


def test_the_api_wants_a_boolean_confirmation(client, rad):
    rp = on_reading_worklist(performed=True)
    applied("epic_orm_o01_ca.hl7")
    key = secrets.token_urlsafe(24)
    ApiToken.objects.create(user=rad, name="dictation", key_sha256=ApiToken.digest(key))
    url = f"/api/v1/reports/{rp.accession_number}/sign/"
    body = {"kind": "FINAL", "findings": "Dictated.", "confirm_cancelled": "yes"}
    r = client.post(url, data=json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=f"Token {key}")
    assert r.status_code == 400 and "confirm_cancelled" in r.json()["error"]
    r = client.post(url, data=json.dumps({**body, "confirm_cancelled": False}), content_type="application/json",
                    HTTP_AUTHORIZATION=f"Token {key}")
    assert r.status_code == 409 and r.json()["placer_status"] == "CANCELED"
    r = client.post(url, data=json.dumps({**body, "confirm_cancelled": True}), content_type="application/json",
                    HTTP_AUTHORIZATION=f"Token {key}")
    assert r.status_code == 201 and r.json()["report"]["placer_status"]["status"] == "CANCELED"
