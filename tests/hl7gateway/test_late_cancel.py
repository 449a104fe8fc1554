"""An EHR's cancel (ORM^O01 ORC-1 CA) that arrives after the exam was performed and the study is on
the reading worklist, sent by a real MLLP client (python-hl7's ``MLLPClient``) to the real
listener: answered AA, stored and applied -- the exam stays COMPLETED, the order carries the
placer status, the reading worklist page and the dictation API show the flag, a FINAL signature
without the confirmation is refused (HTTP 409), with it signed and audited, and the technical
charge already posted is reversed (DFT^P03 FT1-6 CD) by the charge rules."""

from __future__ import annotations

import json
import secrets

import hl7
import pytest
from django.urls import reverse
from django.utils import timezone
from hl7.client import MLLPClient
from pydicom.uid import generate_uid

from audit.models import AuditRecord
from hl7gateway.models import InboundMessage, OutboundMessage
from monitoring import journey
from pacs.services import mpps
from project.access import RADIOLOGIST
from project.auditing import events
from ris.models import Report, RequestedProcedure, ScheduledProcedureStep
from tests.factories import oru as h
from tests.factories import reading, received_study
from tests.support.hl7 import ack_fields, fixture, unframe
from tests.support.mpps import completion_dataset, n_create_dataset
from worklist.models import ApiToken, ReadingItem

pytestmark = [pytest.mark.socket, pytest.mark.django_db(transaction=True)]


def send(port: int, raw: bytes) -> dict:
    with MLLPClient("127.0.0.1", port) as client:
        return ack_fields(unframe(client.send_message(raw)))


def charges(rp) -> list[tuple[str, str, str]]:
    """(charge kind, FT1-6, FT1-2) of every DFT^P03 queued for the procedure, oldest first."""
    rows = OutboundMessage.objects.filter(kind="CHARGE", requested_procedure=rp).order_by("id")
    out = []
    for row in rows:
        ft1 = hl7.parse(bytes(row.payload).decode()).segment("FT1")
        out.append((row.charge_kind, str(ft1[6]), str(ft1[2])))
    return out


def perform(rp: RequestedProcedure) -> None:
    """The modality performs the exam: MPPS IN PROGRESS, the images stored, MPPS COMPLETED (IHE
    RAD-6/RAD-7): the study completes and goes on the reading worklist."""
    step = rp.steps.get()
    uid = generate_uid()
    mpps.create(uid, n_create_dataset(step).to_json_dict(), calling_ae_title="CT1")
    received_study(rp)
    ds, _ = completion_dataset(n_images=0)
    mpps.update(uid, ds.to_json_dict(), calling_ae_title="CT1")


def api(client, key: str, body: dict):
    return client.post("/api/v1/reports/", data=json.dumps(body), content_type="application/json",
                       HTTP_AUTHORIZATION=f"Token {key}")


def test_a_cancel_after_the_exam_is_accepted_flagged_confirmed_and_credited(listener, broker, client):
    h.destination("billing", 2576, sends_charges=True)
    server = listener()
    assert send(server.port, fixture("epic_orm_o01_nw.hl7"))["msa_1"] == "AA"
    rp = RequestedProcedure.objects.get(accession_number="EA100001")
    perform(rp)
    rp.refresh_from_db()
    assert rp.status == "COMPLETED" and ReadingItem.objects.filter(requested_procedure=rp).exists()
    [(kind, ft1_6, transaction_id)] = charges(rp)
    assert (kind, ft1_6) == ("technical", "CG")

    ack = send(server.port, fixture("epic_orm_o01_ca.hl7"))

    assert (ack["msa_1"], ack["msa_2"], ack["err"]) == ("AA", "EPC000102", None)
    stored = InboundMessage.objects.get(message_control_id="EPC000102")
    assert (stored.status, stored.ack_code) == ("APPLIED", "AA")
    rp.refresh_from_db()
    # The exam was done: the workflow status stays, the order carries the placer's cancel.
    assert rp.status == "COMPLETED" and ScheduledProcedureStep.objects.get(requested_procedure=rp).status == "COMPLETED"
    assert (rp.placer_status, rp.placer_status_cause) == ("CANCELED", "HL7 ORM^O01 CA/CA EPC000102")
    today = timezone.localdate().isoformat()
    flag = f"order cancelled by the EHR on {today}"
    assert rp.placer_flag == flag
    item = ReadingItem.objects.get(requested_procedure=rp)
    assert (item.placer_status, item.placer_flag) == ("CANCELED", flag)
    # The technical charge posted is reversed once, with its own FT1-2.
    assert charges(rp) == [("technical", "CG", transaction_id), ("technical", "CD", transaction_id)]
    # The accession's journey tells the cancel, with its message.
    steps = journey.timeline(journey.collect("EA100001"), now=timezone.now(), **journey.thresholds())
    assert [(s.label, s.peer, s.outcome) for s in steps if s.label.startswith("placer status")] == [
        ("placer status (none) -> CANCELED", "EPIC", "HL7 ORM^O01 CA/CA EPC000102")]

    # The flag on the reading worklist page and in the dictation API.
    rad = reading.user("rad", RADIOLOGIST, first_name="Rita", last_name="Reader")
    client.force_login(rad)
    page = client.get(reverse("worklist:list")).content.decode()
    assert f'data-accession="EA100001" data-priority="{item.requested_procedure_priority}" ' \
           f'data-placer-status="CANCELED"' in page
    assert f"Order cancelled by the EHR on {today}" in page
    key = secrets.token_urlsafe(24)
    ApiToken.objects.create(user=rad, name="dictation", key_sha256=ApiToken.digest(key))
    shown = client.get("/api/v1/reports/EA100001/", HTTP_AUTHORIZATION=f"Token {key}").json()
    assert shown["placer_status"]["status"] == "CANCELED" and shown["placer_status"]["flag"] == flag
    assert shown["placer_status"]["message"] == "HL7 ORM^O01 CA/CA EPC000102"

    # FINAL without the confirmation: 409 naming the flag, nothing signed.
    body = {"accession_number": "EA100001", "findings": "Dictated.", "impression": "Normal.", "sign": "FINAL"}
    refused = api(client, key, body)
    assert refused.status_code == 409
    assert refused.json()["flag"] == flag and flag in refused.json()["error"]
    assert refused.json()["confirm_with"] == {"confirm_cancelled": True}
    assert not Report.objects.filter(requested_procedure=rp, status="FINAL").exists()

    # With it: signed, the confirmation in the signature's audit record.
    signed = api(client, key, {**body, "confirm_cancelled": True})
    assert signed.status_code == 201, signed.content
    assert signed.json()["report"]["status"] == "FINAL"
    record = AuditRecord.records.get(event_id=events.PROCEDURE_RECORD.value, actor="rad",
                                     detail__signed="FINAL")
    assert record.detail["confirmed_placer_status"] == "CANCELED" and record.detail["placer_flag"] == flag
    assert record.detail["placer_status_cause"] == "HL7 ORM^O01 CA/CA EPC000102"
    # The reading of a cancelled order is not billed: no professional charge, no second credit.
    assert charges(rp) == [("technical", "CG", transaction_id), ("technical", "CD", transaction_id)]
