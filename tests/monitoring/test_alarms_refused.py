"""Inbound HL7 refused by the sender policy: counted per source address by hl7gateway, read by
monitoring's alarm rules (kind hl7_refused), shown on the operator's console; refused messages
carrying a real sender's MSH-3/MSH-4 neither feed nor hide that sender's own figures."""

from __future__ import annotations

import datetime as dt
import importlib

import pytest
from django.apps import apps
from django.utils import timezone

from hl7gateway.intake import handle_payload
from monitoring import selectors, services
from monitoring.metrics import DatabaseCollector
from monitoring.models import HL7_REFUSED, INBOUND_SILENCE, Alarm, AlarmRule
from project.access import ADMINISTRATOR
from tests.factories import rule, user
from tests.support.hl7 import ack_fields, fixture, with_control_id

pytestmark = pytest.mark.django_db

ATTACKER = "10.66.0.9:40000"


def default_rule() -> AlarmRule:
    """The rule the migration installs (run again here: transactional tests flush migration data)."""
    migration = importlib.import_module("monitoring.migrations.0005_hl7_refusals")
    migration.add_refusal_rule(apps, None)
    migration.add_refusal_rule(apps, None)  # idempotent
    return AlarmRule.objects.get(kind=HL7_REFUSED)


def refused(control_id: str, peer: str = ATTACKER) -> None:
    ack = handle_payload(with_control_id(fixture("epic_adt_a40.hl7"), control_id), peer)
    assert ack_fields(ack)["msa_1"] == "AR"


def test_refusals_open_an_alarm_on_the_console_and_clear_after_the_window(client):
    r = default_rule()
    assert (r.threshold_minutes, r.min_count, r.interface_key, r.enabled) == (60, 1, "", True)
    now = timezone.now()
    assert services.evaluate(now)["opened"] == 0  # no refusal, no alarm
    for i in range(3):
        refused(f"A40-{i}")
    assert services.evaluate(now)["opened"] == 1
    alarm = Alarm.objects.get(rule=r)
    assert alarm.interface_key == "10.66.0.9" and alarm.last_value == 3.0
    assert "3 HL7 message(s) from 10.66.0.9 refused" in alarm.message and "EPIC^SYNTH_HOSP ADT^A40" in alarm.message
    assert "Testpatient" not in alarm.message and "E1000001" not in alarm.message

    client.force_login(user("opal", ADMINISTRATOR))
    page = client.get("/monitoring/").content.decode()
    assert "Inbound HL7 refused" in page and "10.66.0.9" in page

    assert services.evaluate(now + dt.timedelta(minutes=30))["opened"] == 0  # still open, not re-notified
    assert services.evaluate(now + dt.timedelta(minutes=90))["cleared"] == 1


def test_refused_messages_do_not_count_as_the_real_senders_traffic():
    """Anyone can write EPIC^SYNTH_HOSP into MSH-3/MSH-4: its refused messages must not keep the
    real sender's silence alarm from opening, nor appear as its interface."""
    r = rule(INBOUND_SILENCE, "EPIC^SYNTH_HOSP", minutes=30)
    AlarmRule.objects.filter(pk=r.pk).update(created_at=timezone.now() - dt.timedelta(hours=2))
    refused("SPOOF-1")
    assert selectors.inbound_last_message_at("EPIC^SYNTH_HOSP") is None
    assert "EPIC^SYNTH_HOSP" not in selectors.inbound_senders()
    services.evaluate()
    assert Alarm.objects.get(rule=r).is_open
    assert selectors.inbound_refusals(timezone.now() - dt.timedelta(hours=1))["10.66.0.9"]["count"] == 1
    families = {f.name: f for f in DatabaseCollector().collect()}
    assert not [s for s in families["pacs_hl7_inbound_messages"].samples if s.labels["sender"] == "EPIC^SYNTH_HOSP"]
    assert [s.value for s in families["pacs_hl7_inbound_refused_messages"].samples if s.name.endswith("_total")] == [1]
