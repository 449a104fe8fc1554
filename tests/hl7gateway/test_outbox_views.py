"""The outbound operator page (/interfaces/): queue depth, oldest undelivered age, failures with
their reason, retry and cancel recorded with who did it; administrators only."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from hl7gateway.models import OutboundAction, OutboundMessage
from hl7gateway.outbox import delivery
from project.access import ADMINISTRATOR
from tests.factories import oru as h
from tests.support.mllp_sink import AR

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def one_per_task(settings):
    settings.HL7_ORU_BATCH_SIZE = 1  # each deliver() below sends exactly the row it is given


def signed(n: int, *, patient=None) -> list[OutboundMessage]:
    user = h.radiologist()
    rows = []
    for _ in range(n):
        version = h.sign_report(h.study(for_patient=patient), user)
        rows.extend(OutboundMessage.objects.filter(report_version=version).order_by("destination__name"))
    return rows


def test_summary_per_destination(operator, sink):
    billing = h.destination("billing", sink.port)
    h.destination("ehr", sink.port)
    rows = signed(3)  # 6 rows: 3 per destination
    billing_rows = [r for r in rows if r.destination_id == billing.pk]
    delivery.deliver(billing_rows[0].pk)
    OutboundMessage.objects.filter(pk=billing_rows[1].pk).update(
        created_at=timezone.now() - dt.timedelta(hours=2, minutes=5))
    sink.mode = AR
    delivery.deliver(billing_rows[2].pk)
    page = operator.get("/interfaces/")
    assert page.status_code == 200
    html = page.content.decode()
    summaries = {s.destination.name: s for s in page.context["summaries"]}
    assert (summaries["billing"].pending, summaries["billing"].failed, summaries["billing"].delivered) == (1, 1, 1)
    assert summaries["billing"].queue_depth == 2 and summaries["ehr"].queue_depth == 3
    assert summaries["billing"].oldest_age == "2 h 5 min"
    assert "2 h 5 min" in html
    # The failure, with its reason, in "Needs attention".
    problem_ids = [m.message_control_id for m in page.context["problems"]]
    assert problem_ids == [billing_rows[2].message_control_id]
    assert "Simulated rejection" in html and "AR" in html


def test_held_back_message_names_its_blocker(operator, sink):
    h.destination("ehr", sink.port)
    patient = h.patient()
    first, second = signed(2, patient=patient)
    sink.mode = AR
    delivery.deliver(first.pk)
    delivery.deliver(second.pk)
    page = operator.get(f"/interfaces/outbound/{second.pk}/")
    assert page.status_code == 200 and page.context["blocked_by"].pk == first.pk
    overview = operator.get("/interfaces/")
    assert [m.pk for m in overview.context["problems"]] == [first.pk, second.pk]  # the failed one, then what it holds
    assert f"held behind {first.message_control_id}" in overview.content.decode()


def test_detail_shows_bytes_attempts_and_ack(operator, sink):
    h.destination("ehr", sink.port)
    (row,) = signed(1)
    delivery.deliver(row.pk)
    html = operator.get(f"/interfaces/outbound/{row.pk}/").content.decode()
    assert "OBR|1|" in html and "MSA|AA|" + row.message_control_id in html
    assert "PENDING → DELIVERED" in html


def test_retry_and_cancel_are_recorded_with_the_user(operator, sink):
    h.destination("ehr", sink.port)
    first, second = signed(2)
    sink.mode = AR
    delivery.deliver(first.pk)
    response = operator.post(f"/interfaces/outbound/{first.pk}/retry/", {"reason": "EHR fixed", "next": "list"})
    assert response.status_code == 302 and response["Location"] == "/interfaces/"
    first.refresh_from_db()
    assert first.status == "PENDING"
    response = operator.post(f"/interfaces/outbound/{second.pk}/cancel/", {"reason": "duplicate order"})
    assert response.status_code == 302 and response["Location"] == f"/interfaces/outbound/{second.pk}/"
    actions = list(OutboundAction.objects.order_by("pk").values_list("action", "username", "reason"))
    assert actions == [("RETRY", "operator", "EHR fixed"), ("CANCEL", "operator", "duplicate order")]
    assert OutboundAction.objects.filter(user=operator.user).count() == 2
    # Refused actions say why and change nothing.
    response = operator.post(f"/interfaces/outbound/{second.pk}/retry/", {"reason": "x"}, follow=True)
    assert "only a failed message can be retried" in response.content.decode()
    assert OutboundAction.objects.count() == 2


def test_filters_and_search(operator, sink):
    h.destination("ehr", sink.port)
    rows = signed(3)
    delivery.deliver(rows[0].pk)
    page = operator.get("/interfaces/", {"status": "DELIVERED"})
    assert [m.pk for m in page.context["page"]] == [rows[0].pk]
    page = operator.get("/interfaces/", {"q": rows[1].accession_number})
    assert [m.pk for m in page.context["page"]] == [rows[1].pk]
    page = operator.get("/interfaces/", {"q": rows[2].message_control_id, "status": "bogus", "page": "x"})
    assert [m.pk for m in page.context["page"]] == [rows[2].pk]


def test_only_administrators(client, sink):
    h.destination("ehr", sink.port)
    (row,) = signed(1)
    anonymous = client.get("/interfaces/")
    assert anonymous.status_code == 302 and "/accounts/login/" in anonymous["Location"]
    assert client.post(f"/interfaces/outbound/{row.pk}/cancel/").status_code == 302
    client.force_login(h.radiologist("reader"))
    for url in ("/interfaces/", f"/interfaces/outbound/{row.pk}/"):
        assert client.get(url).status_code == 403
    assert client.post(f"/interfaces/outbound/{row.pk}/cancel/").status_code == 403
    row.refresh_from_db()
    assert row.status == "PENDING" and OutboundAction.objects.count() == 0


def test_actions_need_post_and_csrf(sink):
    h.destination("ehr", sink.port)
    (row,) = signed(1)
    user = h.radiologist("op2")
    user.groups.add(Group.objects.get_or_create(name=ADMINISTRATOR)[0])
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    assert strict.get(f"/interfaces/outbound/{row.pk}/cancel/").status_code == 405
    assert strict.post(f"/interfaces/outbound/{row.pk}/cancel/").status_code == 403  # no CSRF token
    row.refresh_from_db()
    assert row.status == "PENDING"


def test_admin_registrations(operator, sink):
    h.destination("ehr", sink.port)
    (row,) = signed(1)
    operator.user.is_staff = operator.user.is_superuser = True
    operator.user.save()
    assert operator.get("/admin/hl7gateway/outbounddestination/").status_code == 200
    assert operator.get("/admin/hl7gateway/outboundmessage/").status_code == 200
    detail = operator.get(f"/admin/hl7gateway/outboundmessage/{row.pk}/change/")
    assert detail.status_code == 200 and "ORU^R01^ORU_R01" in detail.content.decode()
