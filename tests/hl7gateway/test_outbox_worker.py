"""ORU delivery end to end with a REAL Celery worker process (``celery -A project worker -B``) on the
pytest database and Redis, to a real MLLP sink: down then up, AE then AA, AR, and a worker
SIGKILLed mid-send.

The worker runs with short retry and sweep timings (environment below); the test process
signs reports through ``ris.services.reports.sign`` exactly as the browser does, so the
delivery task is published by ``transaction.on_commit`` after the signing transaction.
"""

from __future__ import annotations

import sys

import pytest

from hl7gateway.models import OutboundAttempt, OutboundMessage
from tests.factories import oru as h
from tests.support.celery_worker import oru_worker as Worker
from tests.support.mllp_sink import AA, AE, AR, SILENT
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def worker(tmp_path, broker):
    w = Worker(tmp_path, "h5oru").start()
    yield w
    w.stop()


def statuses() -> list[str]:
    return list(OutboundMessage.objects.order_by("id").values_list("status", flat=True))


def test_sink_down_then_up_delivers_each_once_in_order(worker, sink):
    h.destination("ehr", sink.port)
    sink.down()
    rp, user = h.study(), h.radiologist()
    h.sign_report(rp, user, "PRELIMINARY")
    h.sign_report(rp, user, "FINAL")
    h.sign_report(rp, user, "ADDENDUM", addendum="Correlation with prior: unchanged.")
    rows = list(OutboundMessage.objects.order_by("id"))
    assert [r.result_status for r in rows] == ["P", "F", "C"]
    # While the sink is down the first message is retried; the others wait behind it.
    wait_until(lambda: OutboundAttempt.objects.filter(outcome="CONNECT_ERROR").count() >= 2, 30,
               "retries against the down sink", worker)
    assert set(OutboundAttempt.objects.values_list("message_id", flat=True)) == {rows[0].pk}
    sink.up()
    wait_until(lambda: statuses() == ["DELIVERED"] * 3, 30, "delivery after the sink came back", worker)
    assert sink.control_ids() == [r.message_control_id for r in rows]  # once each, in signing order
    assert [r.segment("OBR")[25] for r in sink.received] == ["P", "F", "C"]


def test_ae_then_aa_is_delivered_with_the_same_msh10(worker, sink):
    h.destination("billing", sink.port)
    sink.script([AE, AE])
    h.sign_report(h.study(), h.radiologist())
    row = OutboundMessage.objects.get()
    wait_until(lambda: statuses() == ["DELIVERED"], 30, "delivery after AE, AE, AA", worker)
    assert sink.control_ids() == [row.message_control_id] * 3
    assert len({r.payload for r in sink.received}) == 1
    assert list(row.attempts.values_list("outcome", flat=True)) == ["AE", "AE", "AA"]
    started = list(row.attempts.values_list("started_at", flat=True))
    assert (started[2] - started[1]) > (started[1] - started[0]) * 0.5  # backed off, not hammered


def test_ar_fails_at_once_and_is_shown_to_the_operator(worker, sink, client):
    h.destination("ehr", sink.port)
    sink.mode = AR
    h.sign_report(h.study(), h.radiologist())
    row = OutboundMessage.objects.get()
    wait_until(lambda: statuses() == ["FAILED"], 30, "the AR to fail the message", worker)
    # Two sweeps after the failure (each re-queues what it finds due): still one attempt, nothing resent.
    sweeps = worker.finished("hl7gateway.sweep_outbound")
    worker.wait_finished("hl7gateway.sweep_outbound", sweeps + 2)
    assert sink.count == 1 and row.attempts.count() == 1
    admin = h.radiologist("ops")
    admin.is_superuser = True
    admin.save()
    client.force_login(admin)
    page = client.get("/interfaces/").content.decode()
    assert row.message_control_id in page and "Simulated rejection" in page and "AR" in page


def test_task_lost_by_the_broker_is_requeued_by_the_sweep(tmp_path, broker, sink):
    """The wake-up published at the commit never reaches a worker (here: the
    Redis queue is emptied before any worker runs); the beat sweep finds the due row and sends it."""
    h.destination("ehr", sink.port)
    h.sign_report(h.study(), h.radiologist())
    row = OutboundMessage.objects.get()
    assert broker.llen("celery") == 1  # the drain task, published after the commit
    broker.flushdb()  # ... and lost
    w = Worker(tmp_path, "h5lost").start()
    try:
        wait_until(lambda: statuses() == ["DELIVERED"], 60, "the sweep to re-queue the lost row", w)
    finally:
        w.stop()
    assert sink.control_ids() == [row.message_control_id]


def test_worker_killed_mid_send_is_delivered_after_restart_with_the_same_msh10(tmp_path, broker, sink):
    h.destination("ehr", sink.port, ack_timeout_seconds=3)
    sink.mode = SILENT  # the message arrives; the worker sits waiting for the ACK
    first = Worker(tmp_path, "h5kill1").start()
    try:
        h.sign_report(h.study(), h.radiologist())
        row = OutboundMessage.objects.get()
        sink.wait_for(1, timeout=30)
        first.kill()
    finally:
        first.kill()
    row.refresh_from_db()
    assert row.status == "PENDING" and row.last_outcome == "SENDING"  # nobody recorded an outcome
    sink.mode = AA
    second = Worker(tmp_path, "h5kill2").start()
    try:
        wait_until(lambda: statuses() == ["DELIVERED"], 60, "delivery after the restart", second)
    finally:
        second.stop()
    assert sink.control_ids() == [row.message_control_id, row.message_control_id]
    assert sink.received[0].payload == sink.received[1].payload
    assert list(row.attempts.values_list("outcome", flat=True)) == [OutboundAttempt.INTERRUPTED, "AA"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
