"""monitoring.journey.collect reads every outbound kind of an accession, not only the ORU^R01 of
its report versions: the order status messages (IHE RAD-3) and charges (IHE RAD-35) of its
requested procedure too."""

from __future__ import annotations

import pytest

from hl7gateway.outbox import enqueue
from monitoring.journey import collect, thresholds, timeline
from tests.factories import oru as h

pytestmark = pytest.mark.django_db


def test_the_journey_lists_order_status_charges_and_results_of_the_procedure():
    h.destination("ehr", 2577, hl7_version="2.3.1", sends_order_status=True, sends_charges=True)
    rp = h.study()
    assert enqueue.enqueue_status(rp.pk, "exam-complete") == 1
    assert enqueue.enqueue_charge(rp.pk, "technical") == 1
    h.sign_report(rp, h.radiologist(), "FINAL")
    other = h.study()  # another accession's messages stay out
    enqueue.enqueue_status(other.pk, "exam-complete")

    rows = collect(rp.accession_number)
    assert sorted((o.kind, o.requested_procedure_id) for o in rows.outbound) == [
        ("CHARGE", rp.pk), ("CHARGE", rp.pk), ("ORU", rp.pk), ("STATUS", rp.pk), ("STATUS", rp.pk)]
    labels = [s.label for s in timeline(rows, now=rows.outbound[0].created_at, **thresholds())]
    assert "ORM^O01 (ORC-5 CM) queued for ehr" in labels
    assert "ORU^R01 (F) queued for ehr" in labels
    assert "DFT^P03 (technical CG) queued for ehr" in labels and "DFT^P03 (professional CG) queued for ehr" in labels
