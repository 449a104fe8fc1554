"""The periodic task: in the beat schedule, and run by a real Celery worker on the test database
(the alarm opens from the worker process, notified once; the admin lists it)."""

from __future__ import annotations

import datetime as dt
import os

import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from hl7gateway.intake import handle_payload
from hl7gateway.models import InboundMessage
from monitoring.models import INBOUND_SILENCE, Alarm
from monitoring.tasks import evaluate_alarms
from tests.factories import rule
from tests.support.celery_worker import BROKER
from tests.support.celery_worker import routing_worker as Worker
from tests.support.hl7 import fixture
from tests.support.webhook import WebhookSink

pytestmark = pytest.mark.django_db(transaction=True)


def test_beat_schedule_names_the_task():
    entry = django_settings.CELERY_BEAT_SCHEDULE["monitoring.evaluate_alarms"]
    assert entry == {"task": "monitoring.evaluate_alarms", "schedule": django_settings.ALARM_CHECK_SECONDS}
    assert evaluate_alarms.name == "monitoring.evaluate_alarms"


def test_a_real_worker_opens_the_alarm_and_the_admin_lists_it(tmp_path, admin_client):
    redis.Redis.from_url(BROKER).flushdb()
    handle_payload(fixture("epic_orm_o01_nw.hl7"))
    InboundMessage.objects.update(received_at=timezone.now() - dt.timedelta(hours=3))
    db = connection.settings_dict
    env = {**os.environ, "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
           "CELERY_BROKER_URL": BROKER, "TCP_NODELAY": "1"}
    with WebhookSink() as hook:
        r = rule(INBOUND_SILENCE, "EPIC^SYNTH_HOSP", webhook_url=hook.url, minutes=60)
        r.notify_emails = ""
        r.save()
        worker = Worker(tmp_path, env).start()
        try:
            evaluate_alarms.delay()
            evaluate_alarms.delay()
            # Both runs finished (the worker logs each): the second found the alarm open and
            # notified nobody again.  No time allowance: the worker's own report is the event.
            worker.wait_finished("monitoring.evaluate_alarms", 2)
        finally:
            worker.stop()
            redis.Redis.from_url(BROKER).flushdb()
        assert Alarm.objects.filter(cleared_at__isnull=True).count() == 1
        assert hook.events() == ["open"]
    page = admin_client.get("/admin/monitoring/alarm/")
    assert page.status_code == 200 and b"EPIC^SYNTH_HOSP" in page.content
    assert admin_client.get("/admin/monitoring/alarmrule/").status_code == 200
    assert admin_client.get("/admin/monitoring/dicomoperation/").status_code == 200
    assert admin_client.get(f"/admin/monitoring/alarm/{Alarm.objects.get().pk}/change/").status_code == 200
