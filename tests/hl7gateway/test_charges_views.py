"""The charges page (/interfaces/charges/): per order, the DFT^P03 charges and credits per
destination -- posted (acknowledged), pending, failed -- with the outbox's retry for a failed one,
recorded with who did it; a Query audit record naming the patients listed; administrators only."""

from __future__ import annotations

import pytest
from django.utils import timezone

from audit.models import AuditRecord
from hl7gateway.models import OutboundAction, OutboundMessage
from hl7gateway.outbox import delivery, enqueue
from tests.factories import oru as h
from tests.support.mllp_sink import AA, AR

pytestmark = pytest.mark.django_db


@pytest.fixture
def posted(sink):
    """Two orders charged to billing: the first acknowledged (posted), the second rejected (failed)."""
    dest = h.destination("billing", sink.port, sends_charges=True, sends_results=False)
    first = h.study(for_patient=h.patient(mrn="MRNCHG001"))
    second = h.study(for_patient=h.patient(mrn="MRNCHG002"))
    enqueue.enqueue_charge(first.pk, "technical")
    sink.script([AA])
    delivery.drain(dest.pk)
    enqueue.enqueue_charge(second.pk, "technical")
    enqueue.enqueue_charge(second.pk, "professional")
    sink.script([AR])
    delivery.drain(dest.pk)
    return {"dest": dest, "first": first, "second": second}


def rows_of(page: str, status: str) -> int:
    return page.count(f'data-status="{status}"')


def test_the_page_lists_posted_pending_and_failed_charges_per_order(operator, posted):
    page = operator.get("/interfaces/charges/").content.decode()
    first, second = posted["first"], posted["second"]
    assert first.accession_number in page and second.accession_number in page
    assert rows_of(page, "DELIVERED") == 1 and rows_of(page, "FAILED") == 1 and rows_of(page, "PENDING") == 1
    assert f"T{first.pk:011d}" in page and f"P{second.pk:011d}" in page  # FT1-2 of each charge
    failed_only = operator.get("/interfaces/charges/", {"state": "failed"}).content.decode()
    assert second.accession_number in failed_only and first.accession_number not in failed_only
    posted_only = operator.get("/interfaces/charges/", {"state": "posted"}).content.decode()
    assert first.accession_number in posted_only and second.accession_number not in posted_only
    by_accession = operator.get("/interfaces/charges/", {"q": first.accession_number}).content.decode()
    assert rows_of(by_accession, "DELIVERED") == 1 and second.accession_number not in by_accession


def test_the_page_writes_a_query_record_naming_the_patients_listed(operator, posted):
    since = AuditRecord.records.order_by("-id").values_list("id", flat=True).first() or 0
    operator.get("/interfaces/charges/", {"state": "failed"})
    record = AuditRecord.records.filter(id__gt=since).get()
    named = set(record.patients.values_list("patient_id", flat=True))
    assert named == {"MRNCHG002"}  # only the patient listed


def test_retry_of_a_failed_charge_is_the_outbox_retry_and_comes_back_here(operator, posted, sink):
    failed = OutboundMessage.objects.get(kind="CHARGE", status="FAILED")
    response = operator.post(f"/interfaces/outbound/{failed.pk}/retry/",
                                 {"reason": "billing fixed the account", "next": "charges"})
    assert response.status_code == 302 and response["Location"] == "/interfaces/charges/"
    failed.refresh_from_db()
    assert failed.status == "PENDING"
    action = OutboundAction.objects.get(message=failed)
    assert (action.action, action.username, action.reason) == ("RETRY", "operator", "billing fixed the account")
    OutboundMessage.objects.filter(kind="CHARGE", status="PENDING").update(next_attempt_at=timezone.now())
    sink.mode = AA
    delivery.drain(posted["dest"].pk)
    assert set(OutboundMessage.objects.values_list("status", flat=True)) == {"DELIVERED"}
    page = operator.get("/interfaces/charges/").content.decode()
    assert rows_of(page, "DELIVERED") == 3


def test_only_administrators(client, posted):
    client.force_login(h.radiologist("reader"))
    assert client.get("/interfaces/charges/").status_code == 403
