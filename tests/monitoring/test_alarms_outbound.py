"""Alarm on an outbound ORU backlog: the destination does not answer, the oldest undelivered
message ages past the threshold (time moved forward), the alarm opens once; the destination
comes up (a real MLLP sink), the message is delivered, the alarm clears once."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from hl7gateway.models import OutboundDestination, OutboundMessage
from hl7gateway.outbox import delivery
from monitoring import services
from monitoring.models import ERROR_RATE, OUTBOUND_BACKLOG, Alarm, AlarmRule
from tests.factories import oru as h
from tests.factories import rule
from tests.support.mllp_sink import MLLPSink
from tests.support.net import free_port

pytestmark = pytest.mark.django_db


@pytest.fixture
def fast(fast):
    fast.HL7_ORU_BATCH_SIZE = 1
    return fast


def test_backlog_ages_opens_then_delivery_clears(mail_settings, webhook, mailoutbox, fast):
    dest = h.destination("billing", free_port())  # nothing listens there
    backlog = rule(OUTBOUND_BACKLOG, "billing", webhook_url=webhook.url, minutes=60)
    # The rule under test alone: the default "final report without ORU delivered" rule watches
    # the same report (tests/monitoring/test_alarms_dangling.py).
    AlarmRule.objects.exclude(pk=backlog.pk).update(enabled=False)
    row = OutboundMessage.objects.get(report_version=h.sign_report(h.study(), h.radiologist()))
    assert delivery.deliver(row.pk) == "PENDING"  # connection refused: retried later
    start = timezone.now()

    assert services.evaluate(start + dt.timedelta(minutes=30))["opened"] == 0
    assert services.evaluate(start + dt.timedelta(minutes=61))["opened"] == 1
    assert services.evaluate(start + dt.timedelta(minutes=70))["opened"] == 0
    alarm = Alarm.objects.get()
    assert alarm.interface_key == "billing" and alarm.last_value >= 61
    assert "1 outbound HL7 message(s) to billing undelivered" in alarm.message
    assert len(mailoutbox) == 1 and webhook.events() == ["open"]

    with MLLPSink() as sink:  # billing is back
        OutboundDestination.objects.filter(pk=dest.pk).update(port=sink.port)
        OutboundMessage.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
        assert delivery.deliver(row.pk) == "DELIVERED"
    assert services.evaluate(start + dt.timedelta(minutes=71))["cleared"] == 1
    assert services.evaluate(start + dt.timedelta(minutes=72)) == {"opened": 0, "cleared": 0, "open": 0}
    assert len(mailoutbox) == 2 and webhook.events() == ["open", "clear"]
    assert webhook.bodies[1]["cleared_at"] is not None


def test_oru_error_rate_from_refused_attempts(mail_settings, webhook, mailoutbox, fast):
    rule(ERROR_RATE, "oru:ehr", webhook_url=webhook.url, minutes=60, threshold_rate=0.5, min_count=2)
    with MLLPSink() as sink:
        h.destination("ehr", sink.port)
        sink.script(["AE", "AE"])
        row = OutboundMessage.objects.get(report_version=h.sign_report(h.study(), h.radiologist()))
        for _ in range(2):
            OutboundMessage.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
            assert delivery.deliver(row.pk) == "PENDING"
        assert services.evaluate()["opened"] == 1  # 2 of 2 attempts answered AE
        OutboundMessage.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
        assert delivery.deliver(row.pk) == "DELIVERED"  # the sink answers AA again
        user = h.radiologist()
        for _ in range(3):
            more = OutboundMessage.objects.get(report_version=h.sign_report(h.study(), user))
            assert delivery.deliver(more.pk) == "DELIVERED"
    assert services.evaluate()["cleared"] == 1  # 2 AE of 6 attempts: 33%
    assert len(mailoutbox) == 2 and webhook.events() == ["open", "clear"]
