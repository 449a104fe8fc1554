"""Outbox rows of one patient and procedure queued at the same moment by separate transactions
(threads, each with its own PostgreSQL connection): the technical charge (DFT^P03, IHE RAD-35)
posted twice at once is queued once; A08s received over MLLP on two connections while the
charge is posted give one ADT^A08 each (IHE RAD-12) and the one charge; a real MLLP sink
receives every message exactly once."""

from __future__ import annotations

import threading
import time

import hl7
import pytest
from django.db import connection, transaction

from hl7gateway import charges
from hl7gateway.models import OutboundMessage
from hl7gateway.models.outbound import ADT, CHARGE, DELIVERED
from hl7gateway.outbox import delivery, enqueue
from pacs.models import VnaDestination
from tests.factories import make_patient, vna_study
from tests.factories import oru as h
from tests.support.hl7 import adt_a08, send_mllp
from tests.support.mllp_sink import MLLPSink

pytestmark = [pytest.mark.socket, pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


@pytest.fixture
def sink():
    with MLLPSink() as s:
        yield s


@pytest.fixture
def setting(sink, store_dir, broker, settings):
    """Patient P7 with a performed procedure whose study is in a VNA taking HL7 ADT; billing
    takes charges; both destinations are the sink."""
    settings.CHARGE_POSTING, settings.CHARGE_POSTING_BY_CODE = "technical,professional", ""
    vna = VnaDestination.objects.create(
        name="vna-with-hl7", ae_title="VNA", host="127.0.0.1", port=1, adt_host="127.0.0.1", adt_port=sink.port
    )
    rp = h.study(for_patient=make_patient("DOE^ANNA", "P7"))
    vna_study(rp, vna)
    billing = h.destination("billing", sink.port, sends_charges=True)
    return rp, billing


def _in_thread(target, results: dict, key: str) -> threading.Thread:
    def run():
        try:
            results[key] = target()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            results[key] = exc
        finally:
            connection.close()

    t = threading.Thread(target=run)
    t.start()
    return t


def test_a_charge_posted_by_two_transactions_at_once_is_queued_once(setting):
    """The first transaction has inserted its row and not committed; the second, which did not
    see it, inserts the same charge: it waits on the unique constraint, then skips its row
    (first wins, in a savepoint) without failing its own transaction."""
    rp, billing = setting
    inserted, results = threading.Event(), {}

    def first():
        with transaction.atomic():
            n = enqueue.enqueue_charge(rp.pk, charges.TECHNICAL)
            inserted.set()
            time.sleep(1.0)  # the second one is blocked on our row meanwhile
        return n

    def second():
        assert inserted.wait(10)
        started = time.monotonic()
        with transaction.atomic():
            n = enqueue.enqueue_charge(rp.pk, charges.TECHNICAL)
        return n, time.monotonic() - started

    threads = [_in_thread(first, results, "first"), _in_thread(second, results, "second")]
    for t in threads:
        t.join(30)
    assert results["first"] == 1, results
    n, waited = results["second"]
    assert n == 0 and waited > 0.5, results  # it met the first one's row, and added nothing
    rows = OutboundMessage.objects.filter(kind=CHARGE, requested_procedure=rp)
    assert rows.count() == 1 and rows.get().destination_id == billing.pk


def test_a08s_on_two_connections_while_the_charge_is_posted_each_queued_and_delivered_once(setting, sink, listener):
    rp, billing = setting
    server = listener()
    start, results = threading.Barrier(4), {}

    def a08(control_id, name):
        def run():
            start.wait(10)
            return send_mllp(server.port, adt_a08(control_id, "P7", name=name))["msa_1"]

        return run

    def charge():
        start.wait(10)
        with transaction.atomic():
            return enqueue.enqueue_charge(rp.pk, charges.TECHNICAL)

    threads = [
        _in_thread(a08("A08-C1", "DOE^ANNA^ONE"), results, "a08-1"),
        _in_thread(a08("A08-C2", "DOE^ANNA^TWO"), results, "a08-2"),
        _in_thread(charge, results, "charge"),
        _in_thread(charge, results, "charge-again"),
    ]
    for t in threads:
        t.join(60)
    assert results["a08-1"] == "AA" and results["a08-2"] == "AA", results
    assert sorted([results["charge"], results["charge-again"]]) == [0, 1], results

    adt = list(OutboundMessage.objects.filter(kind=ADT).order_by("id"))
    charge_rows = list(OutboundMessage.objects.filter(kind=CHARGE))
    assert [r.message_type for r in adt] == ["ADT^A08", "ADT^A08"]  # one per A08 received
    assert len(charge_rows) == 1 and charge_rows[0].destination_id == billing.pk
    control_ids = [r.message_control_id for r in adt + charge_rows]
    assert len(set(control_ids)) == 3

    assert delivery.drain(adt[0].destination_id) == 2
    assert delivery.drain(billing.pk) == 1
    received = sink.wait_for(3)
    assert sorted(m.control_id for m in received) == sorted(control_ids)
    assert delivery.drain(adt[0].destination_id) == 0 and delivery.drain(billing.pk) == 0
    assert sink.count == 3
    assert set(OutboundMessage.objects.values_list("status", flat=True)) == {DELIVERED}
    # The two A08s leave in the order the engine queued them (one patient's chain), each with
    # the name its own change left.
    sent = [m.control_id for m in received if m.segment("MSH")[9].startswith("ADT")]
    assert sent == [r.message_control_id for r in adt]
    names = [hl7.parse(bytes(r.payload).decode()).segment("PID")[5][0] for r in adt]
    assert sorted(str(n) for n in names) == ["DOE^ANNA^ONE", "DOE^ANNA^TWO"]
