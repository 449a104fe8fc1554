"""Replay with a record: reprocess a failed inbound message through the intake's
own handle_payload (a new row with replay_of; the original unchanged), resend a failed ORU through
the outbox's retry; administrators only, a reason required, every action recorded (who, when, why)."""

from __future__ import annotations

import pytest
from django.test import Client, override_settings

from hl7gateway.intake import handle_payload
from hl7gateway.models import InboundMessage, OutboundAction, OutboundMessage
from hl7gateway.outbox import delivery
from monitoring.records import ReplayRecord
from project.access import ADMINISTRATOR, RADIOLOGIST
from ris.models import Order, RequestedProcedure
from tests.factories import oru as h
from tests.factories import user
from tests.support.hl7 import ack_fields, fixture, with_control_id
from tests.support.mllp_sink import AA, AR, MLLPSink

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(client):
    client.force_login(user("olga", ADMINISTRATOR))
    return client


def _failed_cancel() -> InboundMessage:
    """A cancel (ORC-1 CA) received before its order: answered AE, stored as ERROR."""
    with override_settings(HL7_SENDERS="EPIC^SYNTH_HOSP@10.0.0.9"):  # a declared sender
        ack = handle_payload(with_control_id(fixture("epic_orm_o01_ca.hl7"), "RPL-CA-1"), peer="10.0.0.9:5000")
    assert ack_fields(ack)["msa_1"] == "AE"
    return InboundMessage.objects.get(message_control_id="RPL-CA-1")


def _snapshot(m: InboundMessage) -> tuple:
    m.refresh_from_db()
    return (m.status, m.ack_code, bytes(m.ack), bytes(m.raw), m.error_text, m.effect, m.duplicate_count, m.received_at)


def test_reprocessed_message_is_a_new_row_applied_and_the_original_is_unchanged(admin):
    original = _failed_cancel()
    before = _snapshot(original)
    # The cause is fixed: the order arrives.
    handle_payload(with_control_id(fixture("epic_orm_o01_nw.hl7"), "RPL-NW-1"))
    assert RequestedProcedure.objects.get(accession_number="EA100001").status != "CANCELED"

    response = admin.post(f"/monitoring/replays/inbound/{original.pk}/", {"reason": "order arrived late (INC-42)"})
    assert response.status_code == 302

    assert _snapshot(original) == before  # kept unchanged
    replayed = InboundMessage.objects.get(replay_of=original)
    assert replayed.pk != original.pk and replayed.status == "APPLIED" and replayed.ack_code == "AA"
    assert bytes(replayed.raw) == bytes(original.raw) and replayed.message_control_id == "RPL-CA-1"
    assert replayed.peer == "replay:olga"
    order = Order.objects.get(placer_order_number="P10001")
    assert order.order_control == "CA"  # the cancel was applied this time
    record = ReplayRecord.objects.get()
    assert (record.kind, record.username, record.reason) == ("inbound", "olga", "order arrived late (INC-42)")
    assert record.inbound_id == original.pk and record.replay_id == replayed.pk
    assert record.outcome.startswith("APPLIED, ACK AA") and record.at is not None
    page = admin.get("/monitoring/replays/").content.decode()
    assert "order arrived late (INC-42)" in page and "olga" in page


def test_an_identical_resend_by_the_sender_is_still_answered_from_the_original(admin):
    """The duplicate key excludes replays: a sender's resend still finds the original's stored ACK."""
    original = _failed_cancel()
    handle_payload(with_control_id(fixture("epic_orm_o01_nw.hl7"), "RPL-NW-2"))
    admin.post(f"/monitoring/replays/inbound/{original.pk}/", {"reason": "retry"})
    ack = handle_payload(bytes(original.raw))
    assert ack == bytes(InboundMessage.objects.get(pk=original.pk).ack)
    assert InboundMessage.objects.get(pk=original.pk).duplicate_count == 1
    assert InboundMessage.objects.count() == 3  # original, order, replay: the resend stored nothing


def test_reason_is_required_and_nothing_happens_without_it(admin):
    original = _failed_cancel()
    before = _snapshot(original)
    response = admin.post(f"/monitoring/replays/inbound/{original.pk}/", {"reason": "   "}, follow=True)
    assert "a reason is required" in response.content.decode()
    assert not InboundMessage.objects.filter(replay_of=original).exists()
    assert ReplayRecord.objects.count() == 0 and _snapshot(original) == before


def test_only_failed_messages_can_be_reprocessed(admin):
    handle_payload(with_control_id(fixture("epic_orm_o01_nw.hl7"), "RPL-NW-3"))
    applied = InboundMessage.objects.get(message_control_id="RPL-NW-3")
    response = admin.post(f"/monitoring/replays/inbound/{applied.pk}/", {"reason": "why not"}, follow=True)
    assert "only a message answered with an error can be reprocessed" in response.content.decode()
    assert InboundMessage.objects.count() == 1 and ReplayRecord.objects.count() == 0


def test_a_replay_that_fails_again_is_recorded_with_its_outcome(admin):
    original = _failed_cancel()  # the order still does not exist
    admin.post(f"/monitoring/replays/inbound/{original.pk}/", {"reason": "try again"})
    replayed = InboundMessage.objects.get(replay_of=original)
    assert replayed.status == "ERROR" and replayed.ack_code == "AE"
    record = ReplayRecord.objects.get()
    assert record.outcome.startswith("ERROR, ACK AE") and record.replay_id == replayed.pk


def test_a_radiologist_may_not_replay(client):
    original = _failed_cancel()
    client.force_login(user("rita", RADIOLOGIST))
    assert client.post(f"/monitoring/replays/inbound/{original.pk}/", {"reason": "x"}).status_code == 403
    assert client.get("/monitoring/replays/").status_code == 403
    assert not InboundMessage.objects.filter(replay_of=original).exists() and ReplayRecord.objects.count() == 0


@pytest.fixture
def failed_oru(settings):
    """An ORU refused (AR) by a real MLLP sink: FAILED with the reason."""
    settings.HL7_ORU_BATCH_SIZE = 1
    with MLLPSink(mode=AR) as sink:
        dest = h.destination("billing", sink.port)
        rp = h.study()
        h.sign_report(rp, h.radiologist())
        row = OutboundMessage.objects.get(destination=dest)
        delivery.deliver(row.pk)
        row.refresh_from_db()
        assert row.status == "FAILED"
        yield sink, row


def test_failed_oru_resent_through_the_outbox_retry_with_a_record(admin, failed_oru):
    sink, row = failed_oru
    original_payload = bytes(row.payload)
    sink.mode = AA
    response = admin.post(f"/monitoring/replays/outbound/{row.pk}/", {"reason": "billing fixed its mapping"})
    assert response.status_code == 302
    row.refresh_from_db()
    assert row.status == "PENDING"
    record = ReplayRecord.objects.get()
    assert (record.kind, record.outbound_id, record.username, record.reason) == (
        "outbound", row.pk, "olga", "billing fixed its mapping")
    action = OutboundAction.objects.get(message=row)  # the outbox's own record of its retry
    assert (action.action, action.username, action.reason) == ("RETRY", "olga", "billing fixed its mapping")
    assert delivery.deliver(row.pk)
    row.refresh_from_db()
    assert row.status == "DELIVERED" and bytes(row.payload) == original_payload
    assert sink.control_ids() == [row.message_control_id, row.message_control_id]  # same MSH-10 both times
    # The accession's journey shows the operator's resend with who and why.
    from django.utils import timezone

    from monitoring import journey

    steps = journey.timeline(journey.collect(row.accession_number), now=timezone.now(), **journey.thresholds())
    (resend,) = [s for s in steps if "operator retry" in s.label]
    assert (resend.peer, resend.outcome) == ("olga", "billing fixed its mapping")
    assert steps[-1].label == "ORU^R01 acknowledged by billing"


def test_failed_oru_resend_needs_a_reason_and_a_failed_row(admin, failed_oru):
    _, row = failed_oru
    response = admin.post(f"/monitoring/replays/outbound/{row.pk}/", {"reason": ""}, follow=True)
    assert "a reason is required" in response.content.decode()
    row.refresh_from_db()
    assert row.status == "FAILED" and not OutboundAction.objects.exists() and not ReplayRecord.objects.exists()
    admin.post(f"/monitoring/replays/outbound/{row.pk}/", {"reason": "once"})
    response = admin.post(f"/monitoring/replays/outbound/{row.pk}/", {"reason": "twice"}, follow=True)
    assert "only a failed message can be retried" in response.content.decode()
    assert ReplayRecord.objects.count() == 1


def test_radiologist_may_not_resend(failed_oru):
    _, row = failed_oru
    c = Client()
    c.force_login(user("rolf", RADIOLOGIST))
    assert c.post(f"/monitoring/replays/outbound/{row.pk}/", {"reason": "x"}).status_code == 403
    row.refresh_from_db()
    assert row.status == "FAILED"


def test_a_replay_still_running_blocks_a_second_one_until_it_is_stale(admin):
    import datetime as dt

    from django.contrib.auth.models import User

    original = _failed_cancel()
    running = ReplayRecord.objects.create(kind="inbound", inbound=original, user=User.objects.get(username="olga"),
                                          username="olga", reason="first", outcome="started")
    response = admin.post(f"/monitoring/replays/inbound/{original.pk}/", {"reason": "second"}, follow=True)
    assert "being reprocessed by someone else" in response.content.decode()
    assert not InboundMessage.objects.filter(replay_of=original).exists()
    # A record left "started" by a killed process no longer blocks after 5 minutes.
    ReplayRecord.objects.filter(pk=running.pk).update(at=running.at - dt.timedelta(minutes=6))
    admin.post(f"/monitoring/replays/inbound/{original.pk}/", {"reason": "second"})
    assert InboundMessage.objects.filter(replay_of=original).count() == 1
