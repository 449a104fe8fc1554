"""The outbox write side: rows are committed with the signature, tasks only after the commit
(``transaction.on_commit``), one row per (report version, enabled destination), a stable MSH-10."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import transaction
from django.utils import timezone

from hl7gateway.models import OutboundDestination, OutboundMessage
from hl7gateway.outbox import actions, content, delivery, destinations, enqueue, publish, rules
from ris.errors import UnknownKey
from ris.models import StatusChange
from tests.factories import oru as h

pytestmark = pytest.mark.django_db


class Boom(Exception):
    pass


def _field(payload: bytes, segment: str, n: int) -> str:
    for seg in bytes(payload).decode().split("\r"):
        if seg.startswith(segment + "|"):
            fields = seg.split("|")
            return fields[n - 1] if segment == "MSH" else fields[n]
    raise AssertionError(f"no {segment}")


def test_signature_rolled_back_leaves_no_row_and_no_task(django_capture_on_commit_callbacks):
    h.destination("billing", 2576)
    rp, user = h.study(), h.radiologist()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        with pytest.raises(Boom):
            with transaction.atomic():
                h.sign_report(rp, user)
                assert OutboundMessage.objects.count() == 1  # written inside the transaction
                raise Boom
    assert OutboundMessage.objects.count() == 0
    assert callbacks == []


def test_signature_committed_gives_one_row_per_enabled_destination_and_one_dispatch(
    django_capture_on_commit_callbacks, monkeypatch
):
    billing = h.destination("billing", 2576, receiving_application="BILLING", receiving_facility="HOSP")
    ehr = h.destination("ehr", 2577, hl7_version="2.3.1")
    h.destination("old-ris", 2578, enabled=False)
    rp, user = h.study(), h.radiologist()
    published: list[int] = []
    monkeypatch.setattr(publish, "wake", lambda ids: published.extend(ids))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        version = h.sign_report(rp, user)
    rows = list(OutboundMessage.objects.order_by("destination__name"))
    assert [r.destination_id for r in rows] == [billing.pk, ehr.pk]
    # After the commit: one wake-up of each destination that got a row.
    assert len(callbacks) == 1 and sorted(published) == [billing.pk, ehr.pk]
    for row in rows:
        assert row.report_version_id == version.pk and row.status == "PENDING" and row.result_status == "F"
        assert row.message_control_id == content.message_control_id(row.pk)
        assert _field(row.payload, "MSH", 10) == row.message_control_id
        assert row.accession_number == rp.accession_number and row.patient_id == rp.order.patient_id
    assert _field(rows[0].payload, "MSH", 12) == "2.5.1" and _field(rows[0].payload, "MSH", 5) == "BILLING"
    assert _field(rows[1].payload, "MSH", 12) == "2.3.1" and rows[1].hl7_version == "2.3.1"
    assert len({r.message_control_id for r in rows}) == 2


def test_enqueue_twice_adds_nothing_and_new_destination_gets_its_row(django_capture_on_commit_callbacks):
    h.destination("billing", 2576)
    rp, user = h.study(), h.radiologist()
    with django_capture_on_commit_callbacks(execute=False):
        version = h.sign_report(rp, user)
        first = OutboundMessage.objects.get()
        assert enqueue.enqueue_oru(version.pk) == 0
        h.destination("ehr", 2577)
        assert enqueue.enqueue_oru(version.pk) == 1
    assert OutboundMessage.objects.count() == 2
    first.refresh_from_db()
    assert _field(first.payload, "MSH", 10) == first.message_control_id  # unchanged


def test_every_signature_kind_is_queued_with_its_result_status(django_capture_on_commit_callbacks):
    h.destination("ehr", 2577)
    rp, user = h.study(), h.radiologist()
    with django_capture_on_commit_callbacks(execute=False):
        h.sign_report(rp, user, "PRELIMINARY")
        h.sign_report(rp, user, "FINAL")
        h.sign_report(rp, user, "ADDENDUM", addendum="Compared with prior: stable.")
    assert list(OutboundMessage.objects.order_by("id").values_list("result_status", flat=True)) == ["P", "F", "C"]
    for row in OutboundMessage.objects.all():
        assert _field(row.payload, "OBR", 25) == row.result_status


def test_wake_ups_are_coalesced_until_the_drain_starts(settings, monkeypatch):
    from project.celery import app

    sent: list[tuple] = []
    monkeypatch.setattr(app, "send_task", lambda name, args=None, **kw: sent.append((name, args)))
    billing, ehr = h.destination("billing", 2576), h.destination("ehr", 2577)
    assert publish.wake([billing.pk, ehr.pk]) == 2
    assert publish.wake([billing.pk, ehr.pk]) == 0  # drains already queued: their tasks take the new rows
    assert sent == [(publish.DRAIN_TASK_NAME, [billing.pk]), (publish.DRAIN_TASK_NAME, [ehr.pk])]
    delivery.drain(billing.pk)  # starts (nothing due): clears the request
    assert publish.wake([billing.pk, ehr.pk]) == 1
    # A request that stayed queued too long counts as lost (a broker that dropped it).
    OutboundDestination.objects.filter(pk=ehr.pk).update(
        drain_requested_at=timezone.now() - timedelta(seconds=settings.HL7_ORU_REQUEUE_AFTER_SECONDS + 1))
    assert publish.wake([ehr.pk]) == 1


def test_broker_unreachable_signature_still_commits_and_wake_is_withdrawn(monkeypatch):
    """The broker (Redis, outside our code) refuses the publish.  The signature
    and its rows are committed anyway (the callback is robust); the drain request is withdrawn so
    the next signature publishes again; the sweep re-queues the rows when the broker is back."""
    from kombu.exceptions import OperationalError

    from project.celery import app

    def refuse(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(app, "send_task", refuse)
    ehr = h.destination("ehr", 2577)
    with pytest.raises(OperationalError):
        publish.wake([ehr.pk])
    ehr.refresh_from_db()
    assert ehr.drain_requested_at is None


@pytest.mark.django_db(transaction=True)
def test_signature_commits_when_the_broker_refuses_after_commit(monkeypatch, caplog):
    from kombu.exceptions import OperationalError

    from project.celery import app

    def refuse(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(app, "send_task", refuse)
    ehr = h.destination("ehr", 2577)
    rp, user = h.study(), h.radiologist()
    version = h.sign_report(rp, user)  # commits; the wake-up after the commit fails and is logged
    assert version.signed_at is not None
    row = OutboundMessage.objects.get(report_version=version)
    assert row.status == "PENDING" and row.dispatched_at is not None  # the sweep re-queues it later
    ehr.refresh_from_db()
    assert ehr.drain_requested_at is None
    assert "Connection refused" in caplog.text


def test_many_signatures_in_one_transaction_wake_each_destination_once(django_capture_on_commit_callbacks,
                                                                        monkeypatch):
    billing, ehr = h.destination("billing", 2576), h.destination("ehr", 2577)
    user = h.radiologist()
    rps = [h.study() for _ in range(4)]
    woken: list[list[int]] = []
    monkeypatch.setattr(publish, "wake", lambda ids: woken.append(list(ids)))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with transaction.atomic():
            with pytest.raises(Boom), transaction.atomic():  # the first signature rolls back (savepoint)
                h.sign_report(rps[0], user)
                raise Boom
            for rp in rps[1:]:
                h.sign_report(rp, user)
    assert OutboundMessage.objects.count() == 6
    assert len(callbacks) == 1 and woken == [[billing.pk, ehr.pk]]


def test_unknown_or_unsigned_version_is_refused():
    with pytest.raises(UnknownKey):
        enqueue.enqueue_oru(999999)


def test_no_destination_queues_nothing(django_capture_on_commit_callbacks):
    rp, user = h.study(), h.radiologist()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        h.sign_report(rp, user)
    assert OutboundMessage.objects.count() == 0 and callbacks == []


# --- destinations declared in the environment ---------------------------------------------------
def test_parse_destinations():
    specs = destinations.parse_destinations(
        "billing=mllp://billing-host:2576, ehr=mllp://10.0.0.7:2577?version=2.3.1&application=EHR&facility=HOSP"
    )
    assert [(s.name, s.host, s.port) for s in specs] == [("billing", "billing-host", 2576), ("ehr", "10.0.0.7", 2577)]
    assert specs[1].options == {"hl7_version": "2.3.1", "receiving_application": "EHR", "receiving_facility": "HOSP"}
    assert destinations.parse_destinations("") == []


def test_documented_examples_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    examples = [
        line.split("HL7_ORU_DESTINATIONS=", 1)[1].strip()
        for name in (".env.example", "README.md")
        for line in (root / name).read_text().splitlines()
        if "HL7_ORU_DESTINATIONS=" in line and "mllp://" in line
    ]
    assert len(examples) >= 2
    for value in examples:
        assert {s.name for s in destinations.parse_destinations(value)} == {"billing", "ehr"}, value


@pytest.mark.parametrize(
    "value",
    [
        "billing",  # no address
        "billing=http://h:1",  # wrong scheme
        "billing=mllp://h",  # no port
        "billing=mllp://h:99999",  # port out of range
        "billing=mllp://h:1,billing=mllp://h:2",  # twice
        "billing=mllp://h:1?version=2.4",  # unsupported version
        "billing=mllp://h:1?colour=red",  # unknown option
    ],
)
def test_parse_destinations_refuses(value):
    with pytest.raises(ValueError):
        destinations.parse_destinations(value)


def test_sync_creates_updates_and_disables(settings):
    admin_made = h.destination("pacs2", 3000)
    settings.HL7_ORU_DESTINATIONS = "billing=mllp://billing-host:2576,ehr=mllp://ehr-host:2577?version=2.3.1"
    destinations.sync_environment_destinations()
    billing = OutboundDestination.objects.get(name="billing")
    assert (billing.host, billing.port, billing.declared_in_environment, billing.enabled) == (
        "billing-host", 2576, True, True)
    assert OutboundDestination.objects.get(name="ehr").hl7_version == "2.3.1"
    # An operator's admin edit of a field the environment does not set survives a sync.
    billing.receiving_facility = "FINANCE"
    billing.save()
    settings.HL7_ORU_DESTINATIONS = "billing=mllp://billing2:2600"
    destinations.sync_environment_destinations()
    billing.refresh_from_db()
    assert (billing.host, billing.port, billing.receiving_facility) == ("billing2", 2600, "FINANCE")
    ehr = OutboundDestination.objects.get(name="ehr")
    assert ehr.enabled is False and ehr.declared_in_environment is False
    admin_made.refresh_from_db()
    assert admin_made.enabled is True  # never declared in the environment: left alone


def test_enqueue_syncs_environment_destinations(settings, django_capture_on_commit_callbacks):
    settings.HL7_ORU_DESTINATIONS = "billing=mllp://127.0.0.1:2576,ehr=mllp://127.0.0.1:2577"
    rp, user = h.study(), h.radiologist()
    with django_capture_on_commit_callbacks(execute=False):
        h.sign_report(rp, user)
    assert sorted(OutboundMessage.objects.values_list("destination__name", flat=True)) == ["billing", "ehr"]


def test_system_check_reports_bad_destinations(settings, capsys):
    from django.core.management.base import SystemCheckError

    settings.HL7_ORU_DESTINATIONS = "billing=mllp://billing-host"
    with pytest.raises(SystemCheckError, match="hl7gateway.E101"):
        call_command("check")
    settings.HL7_ORU_DESTINATIONS = "billing=mllp://billing-host:2576"
    call_command("check")


def test_status_changes_are_recorded_through_transition(django_capture_on_commit_callbacks):
    h.destination("billing", 2576)
    rp, user = h.study(), h.radiologist()
    with django_capture_on_commit_callbacks(execute=False):
        h.sign_report(rp, user)
    row = OutboundMessage.objects.get()
    admin = h.radiologist("opadmin")
    actions.cancel(row.pk, admin, reason="billing does not want this study")
    change = StatusChange.objects.get(entity=rules.ENTITY, object_id=row.pk)
    assert (change.from_status, change.to_status, change.actor) == ("PENDING", "CANCELED", "opadmin")
