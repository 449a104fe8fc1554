"""Delivery rules of the outbox against a real MLLP sink (hl7gateway.delivery.deliver is what the
Celery task runs; here it is called in-process so each rule can be pinned down step by step).
The tests with a real worker process are in test_outbox_worker.py."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from django.utils import timezone

from hl7gateway import client
from hl7gateway.models import OutboundAction, OutboundAttempt, OutboundMessage
from hl7gateway.outbox import actions, delivery, publish, queue, rules, sweep
from ris.models import StatusChange
from tests.factories import oru as h
from tests.support.mllp_sink import AA, AE, AR, CLOSE, SILENT

pytestmark = pytest.mark.django_db


@pytest.fixture
def fast(fast):
    fast.HL7_ORU_MAX_ATTEMPTS = 3
    fast.HL7_ORU_BATCH_SIZE = 1  # one message per task here; batches are tested below
    return fast


def queued(sink, n_reports: int = 1, *, same_patient=None, **dest) -> list[OutboundMessage]:
    """Sign n reports (one study each) for one destination at the sink; return their rows."""
    from hl7gateway.models import OutboundDestination

    if not OutboundDestination.objects.filter(name="ehr").exists():
        h.destination("ehr", sink.port, **dest)
    user = h.radiologist()
    rows = []
    for _ in range(n_reports):
        rp = h.study(for_patient=same_patient)
        version = h.sign_report(rp, user)
        rows.append(OutboundMessage.objects.get(report_version=version))
    return rows


def claim_one(message_id: int, **kwargs):
    """Lease one row the way a task does (a batch of one), as a worker about to send it."""
    claimed = queue.claim_batch(message_id, limit=1, **kwargs)
    return claimed[0] if isinstance(claimed, list) else claimed


def record_one(claimed, result) -> str:
    """Record the outcome of one claimed row (a batch of one)."""
    return delivery.record_results([(claimed, result)])[claimed.message_id]


def make_due(row: OutboundMessage) -> None:
    OutboundMessage.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())


def test_aa_delivers_the_stored_bytes(sink, fast):
    (row,) = queued(sink)
    assert delivery.deliver(row.pk) == "DELIVERED"
    row.refresh_from_db()
    received = sink.wait_for(1)[0]
    assert received.payload == bytes(row.payload) and received.control_id == row.message_control_id
    assert row.status == "DELIVERED" and row.delivered_at and row.leased_until is None
    (attempt,) = row.attempts.all()
    assert b"MSA|AA|" + row.message_control_id.encode() in bytes(attempt.ack)
    assert (attempt.number, attempt.outcome, attempt.finished_at is not None) == (1, "AA", True)
    change = StatusChange.objects.get(entity="oru_outbound", object_id=row.pk)
    assert (change.from_status, change.to_status) == ("PENDING", "DELIVERED")
    # Idempotent: a second run of the task sends nothing.
    assert delivery.deliver(row.pk) == "settled"
    assert sink.count == 1


def test_ae_is_retried_with_backoff_then_aa(sink, fast):
    sink.script([AE])
    (row,) = queued(sink)
    before = timezone.now()
    assert delivery.deliver(row.pk) == "PENDING"
    row.refresh_from_db()
    assert row.last_outcome == "AE" and "Simulated application error" in row.last_error
    wait = (row.next_attempt_at - before).total_seconds()
    assert 0.9 <= wait <= 2.5  # base 2 s, jitter 50-100 %
    assert delivery.deliver(row.pk) == "not-due" and sink.count == 1
    make_due(row)
    assert delivery.deliver(row.pk) == "DELIVERED"
    assert sink.control_ids() == [row.message_control_id] * 2  # same MSH-10 on the resend
    assert [r.payload for r in sink.received][0] == [r.payload for r in sink.received][1]
    assert list(row.attempts.values_list("outcome", flat=True)) == ["AE", "AA"]


def test_ae_up_to_the_cap_then_failed(sink, fast):
    sink.mode = AE
    (row,) = queued(sink)
    for _ in range(3):
        delivery.deliver(row.pk)
        make_due(row)
    row.refresh_from_db()
    assert row.status == "FAILED" and row.attempt_count == 3
    assert "after 3 attempts" in row.last_error and "Simulated application error" in row.last_error
    assert delivery.deliver(row.pk) == "settled" and sink.count == 3


def test_ar_fails_at_once(sink, fast):
    sink.mode = AR
    (row,) = queued(sink)
    assert delivery.deliver(row.pk) == "FAILED"
    row.refresh_from_db()
    assert row.attempt_count == 1 and row.last_outcome == "AR" and "Simulated rejection" in row.last_error
    assert b"MSA|AR|" in bytes(row.ack)


def test_no_answer_within_the_timeout_is_retried_without_limit(sink, fast):
    sink.mode = SILENT
    (row,) = queued(sink, ack_timeout_seconds=0.3)
    for _ in range(4):  # more than HL7_ORU_MAX_ATTEMPTS: a silent destination never fails a report
        assert delivery.deliver(row.pk) == "PENDING"
        make_due(row)
    row.refresh_from_db()
    assert row.status == "PENDING" and row.last_outcome == "TIMEOUT" and "no ACK within 0.3 s" in row.last_error
    assert sink.control_ids() == [row.message_control_id] * 4
    sink.mode = AA
    assert delivery.deliver(row.pk) == "DELIVERED"


def test_destination_down_is_retried_then_delivered_once(sink, fast):
    (row,) = queued(sink)
    sink.down()
    assert delivery.deliver(row.pk) == "PENDING"
    row.refresh_from_db()
    assert row.last_outcome == "CONNECT_ERROR" and "refused" in row.last_error.lower()
    sink.up()
    make_due(row)
    assert delivery.deliver(row.pk) == "DELIVERED"
    assert sink.control_ids() == [row.message_control_id]


def test_connection_closed_without_ack_is_retried(sink, fast):
    sink.script([CLOSE])
    (row,) = queued(sink)
    assert delivery.deliver(row.pk) == "PENDING"
    row.refresh_from_db()
    assert row.last_outcome == "CONNECTION_LOST"


def test_one_patient_in_order_others_not_held(sink, fast):
    patient = h.patient()
    first, second = queued(sink, 2, same_patient=patient)
    (other,) = queued(sink)
    sink.down()
    assert delivery.deliver(first.pk) == "PENDING"
    sink.up()
    assert delivery.deliver(second.pk) == "blocked"  # first is not delivered yet
    assert delivery.deliver(other.pk) == "DELIVERED"  # another patient is not held back
    make_due(first)
    assert delivery.deliver(first.pk) == "DELIVERED"
    assert delivery.deliver(second.pk) == "DELIVERED"
    assert sink.control_ids() == [other.message_control_id, first.message_control_id, second.message_control_id]


def test_failed_message_holds_the_patient_until_cancel(sink, fast):
    patient = h.patient()
    sink.script([AR])
    first, second = queued(sink, 2, same_patient=patient)
    assert delivery.deliver(first.pk) == "FAILED"
    assert delivery.deliver(second.pk) == "blocked"
    blocker = queue.blocking_message(OutboundMessage.objects.get(pk=second.pk))
    assert blocker.pk == first.pk
    operator = h.radiologist("operator1")
    actions.cancel(first.pk, operator, reason="EHR refuses this order")
    action = OutboundAction.objects.get(message=first)
    assert (action.action, action.username, action.from_status, action.reason) == (
        "CANCEL", "operator1", "FAILED", "EHR refuses this order")
    assert delivery.deliver(second.pk) == "DELIVERED"
    assert sink.control_ids() == [first.message_control_id, second.message_control_id]


def test_operator_retry_of_a_failed_message_resends_the_same_msh10(sink, fast):
    sink.script([AR])
    (row,) = queued(sink)
    delivery.deliver(row.pk)
    operator = h.radiologist("operator2")
    actions.retry(row.pk, operator, reason="EHR fixed its mapping")
    row.refresh_from_db()
    assert row.status == "PENDING" and row.attempt_floor == 1
    assert delivery.deliver(row.pk) == "DELIVERED"
    assert sink.control_ids() == [row.message_control_id] * 2
    assert list(OutboundAction.objects.values_list("action", "username")) == [("RETRY", "operator2")]
    assert list(StatusChange.objects.filter(entity="oru_outbound", object_id=row.pk).values_list(
        "to_status", flat=True)) == ["FAILED", "PENDING", "DELIVERED"]


def test_operator_actions_refuse_wrong_states(sink, fast):
    (row,) = queued(sink)
    operator = h.radiologist("operator3")
    with pytest.raises(rules.OutboxError):
        actions.retry(row.pk, operator)  # pending: nothing to retry
    delivery.deliver(row.pk)
    with pytest.raises(rules.OutboxError):
        actions.cancel(row.pk, operator)  # delivered: too late
    assert OutboundAction.objects.count() == 0


def test_worker_lost_mid_send_lease_expires_then_resent_with_same_msh10(sink, fast):
    (row,) = queued(sink)
    claimed = claim_one(row.pk, worker="dead-worker")
    assert isinstance(claimed, queue.Claim)
    # The worker sends and dies before recording anything.
    client.send_message(sink.host, sink.port, claimed.payload, message_control_id=claimed.message_control_id)
    assert delivery.deliver(row.pk) == "leased"  # a redelivered task does not send twice while the lease runs
    OutboundMessage.objects.filter(pk=row.pk).update(leased_until=timezone.now() - dt.timedelta(seconds=1))
    assert delivery.deliver(row.pk) == "DELIVERED"
    assert list(row.attempts.values_list("outcome", flat=True)) == [OutboundAttempt.INTERRUPTED, "AA"]
    assert sink.control_ids() == [row.message_control_id] * 2


def test_worker_lost_too_often_fails_the_message(sink, fast):
    (row,) = queued(sink)
    for _ in range(3):
        assert isinstance(claim_one(row.pk), queue.Claim)
        OutboundMessage.objects.filter(pk=row.pk).update(leased_until=timezone.now() - dt.timedelta(seconds=1))
    assert delivery.deliver(row.pk) == "settled"
    row.refresh_from_db()
    assert row.status == "FAILED" and "worker lost 3 times" in row.last_error
    assert sink.count == 0


def test_result_of_a_taken_over_lease_only_records_the_attempt(sink, fast):
    (row,) = queued(sink)
    slow = claim_one(row.pk)
    OutboundMessage.objects.filter(pk=row.pk).update(leased_until=timezone.now() - dt.timedelta(seconds=1))
    fresh = claim_one(row.pk)
    assert fresh.number == 2
    record_one(slow, client.SendResult(client.ERROR, detail="late"))
    row.refresh_from_db()
    assert row.status == "PENDING" and row.leased_until is not None  # the new holder's lease stands
    record_one(fresh, client.SendResult(client.ACCEPTED, ack=b"MSH|^~\\&\rMSA|AA|x\r"))
    row.refresh_from_db()
    assert row.status == "DELIVERED"
    assert list(row.attempts.values_list("outcome", flat=True)) == ["AE", "AA"]


def test_sweep_requeues_only_lost_rows(sink, fast, monkeypatch, django_capture_on_commit_callbacks):
    published: list[int] = []
    monkeypatch.setattr(publish, "dispatch", lambda ids, countdown=0.0: published.extend(ids))
    fast.HL7_ORU_REQUEUE_AFTER_SECONDS = 30
    patient = h.patient()
    lost, behind = queued(sink, 2, same_patient=patient)
    fresh, later, leased = queued(sink, 3)
    long_ago = timezone.now() - dt.timedelta(minutes=5)
    OutboundMessage.objects.filter(pk__in=[lost.pk, behind.pk, later.pk, leased.pk]).update(dispatched_at=long_ago)
    OutboundMessage.objects.filter(pk=later.pk).update(next_attempt_at=timezone.now() + dt.timedelta(minutes=5))
    OutboundMessage.objects.filter(pk=leased.pk).update(leased_until=timezone.now() + dt.timedelta(minutes=1))
    with django_capture_on_commit_callbacks(execute=True):
        assert sweep.sweep() == 1
    assert published == [lost.pk]  # not: behind (blocked), fresh (just dispatched), later (not due), leased
    lost.refresh_from_db()
    assert lost.dispatched_at > long_ago
    assert sweep.sweep() == 0  # dispatched just now: not again until HL7_ORU_REQUEUE_AFTER_SECONDS


def test_batch_takes_due_rows_of_the_destination_one_per_patient_over_one_connection(sink, fast):
    fast.HL7_ORU_BATCH_SIZE = 10
    patient = h.patient()
    a1, a2 = queued(sink, 2, same_patient=patient)
    b, c = queued(sink, 2)
    connections_before = sink.connections
    assert delivery.deliver(b.pk) == "DELIVERED"
    # b, and along with it a1 and c (a2 waits behind a1): in id order, on one connection.
    assert sink.control_ids() == [a1.message_control_id, b.message_control_id, c.message_control_id]
    assert sink.connections - connections_before == 1
    assert delivery.deliver(a2.pk) == "DELIVERED"
    assert statuses_of(a1, a2, b, c) == ["DELIVERED"] * 4


def test_batch_stops_when_the_destination_stops_answering(sink, fast):
    fast.HL7_ORU_BATCH_SIZE = 10
    rows = queued(sink, 3, ack_timeout_seconds=0.3)
    sink.script([AA, SILENT])
    before = timezone.now()
    assert delivery.deliver(rows[0].pk) == "DELIVERED"
    assert statuses_of(*rows) == ["DELIVERED", "PENDING", "PENDING"]
    second, third = (OutboundMessage.objects.get(pk=r.pk) for r in rows[1:])
    assert second.last_outcome == "TIMEOUT" and second.attempt_count == 1
    # The third was not tried: no attempt counted, it waits as long as the second.
    assert third.attempt_count == 0 and third.attempts.count() == 0 and third.last_outcome == ""
    assert third.next_attempt_at == second.next_attempt_at > before
    assert sink.count == 2


def test_batch_continues_after_ae_and_ar(sink, fast):
    fast.HL7_ORU_BATCH_SIZE = 10
    rows = queued(sink, 3)
    sink.script([AE, AR, AA])
    delivery.deliver(rows[0].pk)
    assert statuses_of(*rows) == ["PENDING", "FAILED", "DELIVERED"]
    assert sink.connections == 1


def test_a_long_queue_held_back_does_not_starve_other_patients(sink, fast):
    """150 messages of one patient wait behind its failed first one; the batch still finds the
    other patient's message further on (head-of-line found per window, not by a full scan)."""
    from ris.models import Report, ReportVersion

    fast.HL7_ORU_BATCH_SIZE = 10
    dest = h.destination("ehr", sink.port)
    rp = h.study()
    report = Report.objects.create(requested_procedure=rp)
    now = timezone.now()
    versions = ReportVersion.objects.bulk_create(
        ReportVersion(report=report, version_number=i, kind="ADDENDUM", result_status="C", signed_at=now)
        for i in range(1, 152)
    )
    OutboundMessage.objects.bulk_create(
        OutboundMessage(destination=dest, report_version=v, patient_id=rp.order.patient_id, result_status="C",
                        message_control_id=f"T{v.pk:08d}", hl7_version="2.5.1",
                        payload=b"MSH|^~\\&|PACS|RAD|||20260101||ORU^R01^ORU_R01|T|P|2.5.1\r", next_attempt_at=now,
                        status="FAILED" if i == 0 else "PENDING")
        for i, v in enumerate(versions)
    )
    (other,) = queued(sink)  # another patient, queued last
    claimed = queue.claim_due(dest.pk, limit=10)
    assert [c.message_id for c in claimed] == [other.pk]


def test_drain_sends_batch_after_batch_and_goes_on_after_ae(sink, fast):
    fast.HL7_ORU_BATCH_SIZE = 2
    patient = h.patient()
    rows = queued(sink, 2, same_patient=patient) + queued(sink, 3)
    sink.script([AE])
    assert delivery.drain(rows[0].destination_id) == 3  # settled: all but the AE and the one behind it
    assert statuses_of(*rows) == ["PENDING", "PENDING", "DELIVERED", "DELIVERED", "DELIVERED"]
    # The second message of the patient waits behind the first (retried after its backoff).
    assert sink.control_ids() == [r.message_control_id for r in (rows[0], rows[2], rows[3], rows[4])]


def test_drain_stops_when_the_destination_stops_answering(sink, fast):
    fast.HL7_ORU_BATCH_SIZE = 2
    rows = queued(sink, 4, ack_timeout_seconds=0.3)
    sink.script([AA, SILENT])
    assert delivery.drain(rows[0].destination_id) == 1
    assert statuses_of(*rows) == ["DELIVERED", "PENDING", "PENDING", "PENDING"]
    assert sink.count == 2  # not one message more after the silence


def statuses_of(*rows) -> list[str]:
    return [OutboundMessage.objects.get(pk=r.pk).status for r in rows]


def test_backoff_is_exponential_jittered_and_capped(fast):
    rng = random.Random(7)
    for failures, full in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (20, 10.0)]:
        values = [rules.backoff_seconds(failures, rng=rng) for _ in range(200)]
        assert min(values) >= full * 0.5 and max(values) <= full
        assert max(values) - min(values) > full * 0.3  # jitter spreads retries out


def test_countdowns_stay_far_below_the_visibility_timeout(settings):
    from django.conf import settings as conf

    assert rules.COUNTDOWN_LIMIT_SECONDS * 10 <= conf.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", 3600)
    assert conf.HL7_ORU_RETRY_MAX_SECONDS < conf.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", 3600)
