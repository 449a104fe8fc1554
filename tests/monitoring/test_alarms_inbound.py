"""Alarms on inbound HL7: a sender that goes quiet, and an error rate (AR answered), each opened
by its condition and closed by its recovery with exactly one e-mail and one webhook POST each way.
Messages go through the real intake (hl7gateway.intake.handle_payload)."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from django.utils import timezone

from hl7gateway.intake import handle_payload
from hl7gateway.models import InboundMessage
from monitoring import services
from monitoring.models import ERROR_RATE, INBOUND_SILENCE, Alarm
from tests.factories import backdate_inbound as backdate
from tests.factories import rule
from tests.support.hl7 import SENDER, ack_fields, unsupported
from tests.support.hl7 import new_order as order
from tests.support.net import free_port
from tests.support.webhook import WebhookSink

pytestmark = pytest.mark.django_db

def test_quiet_sender_opens_once_and_clears_once(mail_settings, webhook, mailoutbox):
    assert ack_fields(handle_payload(order("Q1")))["msa_1"] == "AA"
    r = rule(INBOUND_SILENCE, SENDER, webhook_url=webhook.url, minutes=30)
    now = timezone.now()

    assert services.evaluate(now) == {"opened": 0, "cleared": 0, "open": 0}
    backdate(45)  # the sender went quiet 45 minutes ago
    assert services.evaluate(now)["opened"] == 1
    for _ in range(3):  # checks while it stays quiet: no new notification
        assert services.evaluate(now + dt.timedelta(minutes=5))["opened"] == 0
    alarm = Alarm.objects.get(rule=r)
    assert alarm.is_open and alarm.interface_key == SENDER and alarm.last_value >= 45
    assert len(mailoutbox) == 1 and webhook.events() == ["open"]
    assert "OPEN" in mailoutbox[0].subject and SENDER in mailoutbox[0].subject
    assert mailoutbox[0].to == ["ops@pacs.test", "it@pacs.test"]
    body = webhook.bodies[0]
    assert body["rule"] == r.name and body["interface"] == SENDER and body["kind"] == INBOUND_SILENCE
    assert webhook.headers[0]["Content-Type"] == "application/json"

    # Recovery: the sender speaks again.
    assert ack_fields(handle_payload(order("Q2")))["msa_1"] == "AA"
    assert services.evaluate()["cleared"] == 1
    assert services.evaluate()["cleared"] == 0
    alarm.refresh_from_db()
    assert alarm.cleared_at is not None and alarm.open_notified_at and alarm.clear_notified_at
    assert len(mailoutbox) == 2 and "CLEARED" in mailoutbox[1].subject
    assert webhook.events() == ["open", "clear"]
    # No patient data in what was sent out (the fixture's patient is Testpatient^Anna).
    for text in [m.body + m.subject for m in mailoutbox] + [str(b) for b in webhook.bodies]:
        assert "Testpatient" not in text and "E1000001" not in text


def test_schedule_keeps_nights_and_weekends_quiet(mail_settings, webhook, mailoutbox):
    assert ack_fields(handle_payload(order("S1")))["msa_1"] == "AA"
    rule(INBOUND_SILENCE, SENDER, webhook_url=webhook.url, minutes=30,
         schedule_weekdays="01234", schedule_start_hour=7, schedule_end_hour=19)
    saturday_noon = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)
    monday_3am = dt.datetime(2026, 11, 30, 3, 0, tzinfo=dt.UTC)
    monday_9am = dt.datetime(2026, 11, 30, 9, 0, tzinfo=dt.UTC)
    InboundMessage.objects.update(received_at=saturday_noon - dt.timedelta(hours=2))
    assert services.evaluate(saturday_noon)["opened"] == 0
    assert services.evaluate(monday_3am)["opened"] == 0
    assert not Alarm.objects.exists() and mailoutbox == [] and webhook.bodies == []
    assert services.evaluate(monday_9am)["opened"] == 1
    assert len(mailoutbox) == 1 and webhook.events() == ["open"]


def test_error_rate_opens_on_rejections_and_clears_when_good_messages_follow(mail_settings, webhook, mailoutbox):
    rule(ERROR_RATE, f"hl7:{SENDER}", webhook_url=webhook.url, minutes=60, threshold_rate=0.5, min_count=3)
    assert ack_fields(handle_payload(order("E1")))["msa_1"] == "AA"
    assert ack_fields(handle_payload(unsupported("E2")))["msa_1"] == "AR"
    assert services.evaluate()["opened"] == 0  # 1 of 2: below min_count
    assert ack_fields(handle_payload(unsupported("E3")))["msa_1"] == "AR"
    assert services.evaluate()["opened"] == 1  # 2 of 3 = 67% > 50%
    assert services.evaluate()["opened"] == 0
    assert len(mailoutbox) == 1 and webhook.events() == ["open"]
    assert "2 of 3" in webhook.bodies[0]["message"]
    for n in range(4, 7):
        assert ack_fields(handle_payload(order(f"E{n}")))["msa_1"] == "AA"
    assert services.evaluate()["cleared"] == 1  # 2 of 6 = 33%
    assert len(mailoutbox) == 2 and webhook.events() == ["open", "clear"]


def test_a_failing_webhook_is_logged_and_does_not_stop_mail_or_other_rules(mail_settings, mailoutbox, caplog):
    assert ack_fields(handle_payload(order("F1")))["msa_1"] == "AA"
    backdate(120)
    with WebhookSink(status=500) as failing, WebhookSink() as working:
        rule(INBOUND_SILENCE, SENDER, webhook_url=f"http://127.0.0.1:{free_port()}/refused", minutes=30)
        rule(INBOUND_SILENCE, SENDER, webhook_url=failing.url, minutes=31, name="second")
        rule(INBOUND_SILENCE, SENDER, webhook_url=working.url, minutes=32, name="third")
        with caplog.at_level(logging.ERROR, logger="monitoring.alarms"):
            assert services.evaluate()["opened"] == 3
        assert len(mailoutbox) == 3  # every rule's e-mail went out
        assert len(failing.bodies) == 1 and working.events() == ["open"]
    failures = [r for r in caplog.records if r.getMessage() == "alarm webhook failed"]
    assert len(failures) == 2
    assert Alarm.objects.filter(cleared_at__isnull=True).count() == 3


def test_a_webhook_that_never_answers_is_cut_by_the_timeout(mail_settings, mailoutbox, settings, caplog):
    import socket
    import time

    settings.ALARM_WEBHOOK_TIMEOUT_SECONDS = 0.5
    assert ack_fields(handle_payload(order("T1")))["msa_1"] == "AA"
    backdate(120)
    with socket.socket() as silent:  # accepts the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        rule(INBOUND_SILENCE, SENDER, webhook_url=f"http://127.0.0.1:{silent.getsockname()[1]}/hook", minutes=30)
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="monitoring.alarms"):
            assert services.evaluate()["opened"] == 1
        assert time.monotonic() - started < 5
    assert len(mailoutbox) == 1
    assert [r.getMessage() for r in caplog.records if r.name == "monitoring.alarms"] == ["alarm webhook failed"]
