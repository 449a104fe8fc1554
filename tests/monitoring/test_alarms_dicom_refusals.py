"""Associations refused by the DICOM association policy (an unknown calling AE from another
address) open one alarm per source address on the operator's console, notified once however
often that address is refused again, and cleared after the rule's window without a refusal.
The refusals are real: pynetdicom bound to 127.0.0.2 / 127.0.0.3 against the real listener."""

from __future__ import annotations

import datetime as dt
import importlib

import pytest
from django.apps import apps
from django.db.models import F
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from pynetdicom.sop_class import Verification

from monitoring import services
from monitoring.models import DICOM_REFUSED, Alarm, AlarmRule
from pacs.dimse import db
from pacs.models import DicomRefusal
from tests.factories import rule
from tests.support.dicom import associate_from

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def only_the_test_rules():
    """The rule the migration made (present until a transactional test flushes the tables)
    would open alarms of its own."""
    AlarmRule.objects.filter(kind=DICOM_REFUSED).delete()


def refuse(server, source: str, times: int = 1) -> None:
    for _ in range(times):
        assoc, rejection = associate_from(server, "STRANGER", [Verification], source=source)
        assert assoc.is_rejected and rejection == (0x01, 0x01, 0x03)
    db.flush()  # the count is written on a DIMSE database thread


def test_refusals_open_one_alarm_per_address_notified_once_per_window(listen, mail_settings, webhook, mailoutbox):
    server = listen()
    r = rule(DICOM_REFUSED, webhook_url=webhook.url, minutes=60)
    refuse(server, "127.0.0.2", times=2)
    refuse(server, "127.0.0.3")
    assert services.evaluate()["opened"] == 2
    alarms = {a.interface_key: a for a in Alarm.objects.filter(rule=r)}
    assert set(alarms) == {"127.0.0.2", "127.0.0.3"} and alarms["127.0.0.2"].last_value == 2
    assert "2 DICOM association(s) refused from 127.0.0.2" in alarms["127.0.0.2"].message
    assert "STRANGER" in alarms["127.0.0.2"].message
    assert webhook.events() == ["open", "open"] and len(mailoutbox) == 2

    # refused again and again within the hour: the open alarm is updated, nobody is told again
    refuse(server, "127.0.0.2", times=3)
    assert services.evaluate() == {"opened": 0, "cleared": 0, "open": 2}
    assert Alarm.objects.get(rule=r, interface_key="127.0.0.2").last_value == 5
    assert webhook.events() == ["open", "open"]

    # an hour without refusals (the counters moved back in time): both clear
    DicomRefusal.objects.update(hour=F("hour") - dt.timedelta(hours=2), last_at=F("last_at") - dt.timedelta(minutes=61))
    assert services.evaluate()["cleared"] == 2
    # refused again later: a new alarm, one new notification
    refuse(server, "127.0.0.2")
    assert services.evaluate()["opened"] == 1
    assert webhook.events() == ["open", "open", "clear", "clear", "open"]
    assert all("interface" in b and "PatientName" not in str(b) for b in webhook.bodies)


def test_rule_for_one_address_ignores_the_others_and_metrics_count_per_address(listen, mail_settings, client):
    server = listen()
    rule(DICOM_REFUSED, "127.0.0.3", minutes=60)
    refuse(server, "127.0.0.2")
    assert services.evaluate(timezone.now())["opened"] == 0
    refuse(server, "127.0.0.3", times=2)
    assert services.evaluate(timezone.now())["opened"] == 1
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").content.decode())}
    samples = {(s.labels["address"], s.labels["reason"]): s.value
               for s in families["pacs_dicom_associations_refused"].samples if s.name.endswith("_total")}
    assert samples == {("127.0.0.2", "unknown calling AE"): 1.0, ("127.0.0.3", "unknown calling AE"): 2.0}


def test_a_refusal_rule_exists_out_of_the_box():
    """The monitoring migration adds it (console only until addresses or a webhook are entered)."""
    migration = importlib.import_module("monitoring.migrations.0004_dicom_refusals")
    migration.add_rule(apps, None)
    created = AlarmRule.objects.get(kind=DICOM_REFUSED)
    assert created.enabled and created.threshold_minutes == 60 and not created.interface_key


def test_container_healthcheck_needs_its_node_when_unknown_aes_are_admitted_from_nowhere(listen, settings):
    """``manage.py health dicom`` (the compose healthcheck) echoes as HEALTHCHECK from 127.0.0.1:
    admitted by the loopback default; with DICOM_UNKNOWN_AE_FROM=none it must be declared."""
    from monitoring.health import HEALTHCHECK_AE_TITLE, dicom_echo
    from project.peers import parse_nodes

    settings.DICOM_UNKNOWN_AE_FROM = []
    server = listen()
    assert dicom_echo("127.0.0.1", server.server_address[1], "PACS") is False
    settings.DICOM_NODES_DECLARED, _ = parse_nodes(f"{HEALTHCHECK_AE_TITLE}@127.0.0.1:echo")
    server = listen()
    assert dicom_echo("127.0.0.1", server.server_address[1], "PACS") is True
