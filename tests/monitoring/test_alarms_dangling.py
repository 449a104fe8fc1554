"""Alarms on hand-offs left dangling in the department, each opened past its setting (time moved
forward), not opened when the hand-off happens in time, and cleared when it happens late:

- a declared modality that sends nothing while steps are due for it (dcmtk's findscu as the
  modality, against the engine's AE);
- a storage commitment request no N-EVENT-REPORT answers (PS3.4 J.3; the report recorded by
  ``pacs.services.routing.commitment``);
- a STAT study unread past its turnaround (signed through ``ris.services.reports``);
- a final report whose ORU^R01 the destination has not acknowledged (a real MLLP sink).

Each alarm goes through the same rule, model and notification path as every other kind (e-mail
and webhook), and its message names interfaces and counts, never the patient or accession."""

from __future__ import annotations

import datetime as dt
import types

import pytest
import time_machine
from django.utils import timezone

from hl7gateway.models import OutboundDestination, OutboundMessage
from hl7gateway.outbox import delivery
from monitoring import metrics, selectors, services
from monitoring.models import COMMITMENT_UNANSWERED, MODALITY_SILENT, ORU_UNDELIVERED, STAT_UNREAD, Alarm, AlarmRule
from pacs.dimse import db
from pacs.models import DicomNode
from pacs.models import transfers as tr
from pacs.services.routing.commitment import record_commitment
from project.access import ADMINISTRATOR
from tests.factories import committing_transfer, make_step, reading, rule, user
from tests.factories import oru as h
from tests.support.dicom import findscu
from tests.support.mllp_sink import MLLPSink
from tests.support.net import free_port

MINUTE = dt.timedelta(minutes=1)


def only_rule(kind: str, **fields) -> AlarmRule:
    """The one enabled rule of ``kind`` (the disabled rule the migration ships stays out of it)."""
    AlarmRule.objects.filter(kind=kind).delete()
    return rule(kind, **fields)


# --------------------------------------------------------------------------- silent modality

@pytest.mark.django_db(transaction=True)
def test_silent_modality_opens_and_its_worklist_query_clears(engine, tmp_path, settings, mail_settings, webhook,
                                                             mailoutbox):
    settings.ALARM_MODALITY_SILENCE_MINUTES = 60
    settings.MWL_FILTER_BY_CALLING_AE = False
    DicomNode.objects.create(ae_title="CT1", host="127.0.0.1")
    DicomNode.objects.create(ae_title="MR1", host="127.0.0.1")  # nothing scheduled for it: never alarmed
    only_rule(MODALITY_SILENT, webhook_url=webhook.url)
    now = timezone.now()
    make_step(accession="SIL00001", station="CT1", start=now - 90 * MINUTE)
    make_step(accession="SIL00002", station="CT1", start=now - 80 * MINUTE)
    make_step(accession="SIL00003", station="CT1", start=now - 90 * MINUTE, status="CANCELED")

    assert services.evaluate(now - 40 * MINUTE)["opened"] == 0  # first step due 50 min before: within the limit
    assert services.evaluate(now)["opened"] == 1
    assert services.evaluate(now + MINUTE)["opened"] == 0
    alarm = Alarm.objects.get()
    assert alarm.interface_key == "CT1" and 89 <= alarm.last_value <= 91
    assert "modality CT1 sent nothing" in alarm.message and "2 step(s)" in alarm.message
    assert len(mailoutbox) == 1 and webhook.events() == ["open"]
    assert "SIL0000" not in mailoutbox[0].body

    # The modality comes back: a worklist query (a C-ECHO alone would not count).
    proc, items = findscu(engine, ["AccessionNumber=SIL00001"], tmp_path / "mwl", aet="CT1")
    assert proc.returncode == 0 and len(items) == 1, proc.stderr
    db.flush()  # the operation is counted on a DIMSE database thread
    assert services.evaluate(timezone.now() + MINUTE)["cleared"] == 1
    assert len(mailoutbox) == 2 and webhook.events() == ["open", "clear"]


@pytest.mark.django_db(transaction=True)
def test_a_modality_heard_after_its_step_was_due_is_not_silent(engine, tmp_path, settings):
    settings.ALARM_MODALITY_SILENCE_MINUTES = 60
    settings.MWL_FILTER_BY_CALLING_AE = False
    DicomNode.objects.create(ae_title="CT1", host="127.0.0.1")
    only_rule(MODALITY_SILENT)
    now = timezone.now()
    make_step(accession="SIL00011", station="CT1", start=now - 20 * MINUTE)
    proc, items = findscu(engine, ["AccessionNumber=SIL00011"], tmp_path / "mwl", aet="CT1")
    assert proc.returncode == 0 and len(items) == 1, proc.stderr
    db.flush()
    assert services.evaluate(now + 50 * MINUTE)["opened"] == 0  # the step was due 70 min before, heard since
    assert selectors.silent_modalities(now + 50 * MINUTE, limit_minutes=60) == []
    assert not Alarm.objects.exists()


# ---------------------------------------------------------------------- storage commitment

@pytest.mark.django_db
def test_unanswered_commitment_opens_and_the_late_report_clears(store_dir, settings, mail_settings, mailoutbox):
    settings.ALARM_STORAGE_COMMITMENT_MINUTES = 30
    only_rule(COMMITMENT_UNANSWERED)
    transfer = committing_transfer()
    start = timezone.now()
    assert services.evaluate(start + 20 * MINUTE)["opened"] == 0
    assert services.evaluate(start + 31 * MINUTE)["opened"] == 1
    alarm = Alarm.objects.get()
    assert alarm.interface_key == "vna" and alarm.last_value >= 31
    assert "1 storage commitment request(s) to vna not answered" in alarm.message
    assert len(mailoutbox) == 1

    uids = list(transfer.items.values_list("instance__sop_instance_uid", flat=True))
    assert record_commitment(transfer.transaction_uid, uids, []) == tr.COMMITTED
    assert services.evaluate(start + 32 * MINUTE)["cleared"] == 1
    assert len(mailoutbox) == 2


@pytest.mark.django_db
def test_a_commitment_answered_in_time_opens_nothing(store_dir, settings):
    settings.ALARM_STORAGE_COMMITMENT_MINUTES = 30
    only_rule(COMMITMENT_UNANSWERED)
    transfer = committing_transfer()
    start = timezone.now()
    with time_machine.travel(start + 10 * MINUTE, tick=True):  # the VNA answers after 10 minutes
        uids = list(transfer.items.values_list("instance__sop_instance_uid", flat=True))
        assert record_commitment(transfer.transaction_uid, uids, []) == tr.COMMITTED
    assert services.evaluate(start + 31 * MINUTE)["opened"] == 0
    assert not Alarm.objects.exists()


def test_a_re_request_does_not_restart_the_wait_a_send_failure_does():
    at = timezone.now()

    def change(minutes, to_status):
        return types.SimpleNamespace(at=at + minutes * MINUTE, to_status=to_status)

    asked = [change(0, tr.IN_PROGRESS), change(1, tr.COMMITTING), change(11, tr.IN_PROGRESS), change(12, tr.COMMITTING)]
    assert selectors._asking_since(asked) == at + MINUTE
    retried = [*asked, change(13, tr.RETRYING), change(15, tr.IN_PROGRESS), change(16, tr.COMMITTING)]
    assert selectors._asking_since(retried) == at + 16 * MINUTE
    assert selectors._asking_since([change(0, tr.IN_PROGRESS)]) is None


# ---------------------------------------------------------------------------- STAT unread

@pytest.mark.django_db
def test_unread_stat_study_opens_and_its_final_report_clears(settings, mail_settings, mailoutbox):
    settings.ALARM_STAT_UNREAD_MINUTES = 60
    only_rule(STAT_UNREAD)
    stat = reading.study(priority="STAT", modality="CT")
    reading.study(priority="ROUTINE", modality="CT")  # routine: its turnaround is not watched here
    start = timezone.now()
    assert services.evaluate(start + 50 * MINUTE)["opened"] == 0
    assert services.evaluate(start + 61 * MINUTE)["opened"] == 1
    alarm = Alarm.objects.get()
    assert alarm.interface_key == "CT" and "1 STAT stud(ies) (CT) without a final report" in alarm.message
    assert stat.accession_number not in mailoutbox[0].body

    h.sign_report(stat, h.radiologist(), "PRELIMINARY")  # a preliminary report does not read it
    assert services.evaluate(start + 62 * MINUTE) == {"opened": 0, "cleared": 0, "open": 1}
    h.sign_report(stat, h.radiologist(), "FINAL")
    assert services.evaluate(start + 63 * MINUTE)["cleared"] == 1
    assert len(mailoutbox) == 2


@pytest.mark.django_db
def test_a_stat_study_read_in_time_opens_nothing(settings):
    settings.ALARM_STAT_UNREAD_MINUTES = 60
    only_rule(STAT_UNREAD)
    stat = reading.study(priority="STAT", modality="CT")
    start = timezone.now()
    with time_machine.travel(start + 40 * MINUTE, tick=True):
        h.sign_report(stat, h.radiologist(), "FINAL")
    assert services.evaluate(start + 61 * MINUTE)["opened"] == 0
    assert selectors.unread_stat_studies(start + 61 * MINUTE, limit_minutes=60) == []


# ------------------------------------------------------------------------- ORU undelivered

@pytest.fixture
def fast(fast):
    fast.ALARM_ORU_UNDELIVERED_MINUTES = 30
    return fast


@pytest.mark.django_db
def test_final_report_not_acknowledged_opens_and_the_late_delivery_clears(fast, mail_settings, webhook, mailoutbox):
    dest = h.destination("ehr", free_port())  # nothing listens there
    only_rule(ORU_UNDELIVERED, webhook_url=webhook.url)
    rp = h.study()
    row = OutboundMessage.objects.get(report_version=h.sign_report(rp, h.radiologist()))
    assert delivery.deliver(row.pk) == "PENDING"
    start = timezone.now()
    assert services.evaluate(start + 20 * MINUTE)["opened"] == 0
    assert services.evaluate(start + 31 * MINUTE)["opened"] == 1
    alarm = Alarm.objects.get()
    assert alarm.interface_key == "ehr" and "1 final report(s) not acknowledged by ehr" in alarm.message
    assert webhook.events() == ["open"] and rp.accession_number not in mailoutbox[0].body
    [item] = selectors.undelivered_final_reports(start + 31 * MINUTE, limit_minutes=30)
    assert (item["message_id"], item["status"], item["accession_number"]) == (row.pk, "PENDING", rp.accession_number)

    with MLLPSink() as sink:  # the EHR is back
        OutboundDestination.objects.filter(pk=dest.pk).update(port=sink.port)
        OutboundMessage.objects.filter(pk=row.pk).update(next_attempt_at=timezone.now())
        assert delivery.deliver(row.pk) == "DELIVERED"
    assert services.evaluate(start + 32 * MINUTE)["cleared"] == 1
    assert webhook.events() == ["open", "clear"] and len(mailoutbox) == 2


@pytest.mark.django_db
@pytest.mark.socket
def test_a_report_acknowledged_in_time_opens_nothing_one_never_queued_does(fast):
    only_rule(ORU_UNDELIVERED)
    late = h.destination("billing", free_port(), enabled=False)  # off while the reports are signed
    with MLLPSink() as sink:
        h.destination("ehr", sink.port)
        for _ in range(2):
            row = OutboundMessage.objects.get(report_version=h.sign_report(h.study(), h.radiologist()))
            assert delivery.deliver(row.pk) == "DELIVERED"
    start = timezone.now()
    assert services.evaluate(start + 31 * MINUTE)["opened"] == 0

    # Turned on afterwards, billing never got the ORU^R01 of a report signed while it was off.
    OutboundDestination.objects.filter(pk=late.pk).update(enabled=True)
    assert services.evaluate(start + 31 * MINUTE)["opened"] == 1
    assert Alarm.objects.get().interface_key == "billing"
    items = selectors.undelivered_final_reports(start + 31 * MINUTE, limit_minutes=30)
    assert [(i["key"], i["message_id"], i["status"]) for i in items] == [("billing", None, "never queued")] * 2


# ------------------------------------------------------------------------ console and metrics

@pytest.mark.django_db
def test_console_lists_what_is_stuck_with_its_age_and_links(client, store_dir, settings):
    settings.ALARM_STAT_UNREAD_MINUTES = 60
    settings.ALARM_STORAGE_COMMITMENT_MINUTES = 30
    only_rule(STAT_UNREAD)
    stat = reading.study(priority="STAT", modality="MR")
    transfer = committing_transfer()
    later = timezone.now() + 90 * MINUTE
    services.evaluate(later)
    with time_machine.travel(later, tick=False):
        client.force_login(user("ops", ADMINISTRATOR))
        page = client.get("/monitoring/").content.decode()
    assert 'id="stat-unread"' in page and f"?accession={stat.accession_number}" in page
    assert "STAT studies unread (1)" in page and "1 h 30 min" in page
    assert "Storage commitments not answered (1)" in page and "/imaging/transfers/?status=COMMITTING" in page
    assert f'data-key="{transfer.destination.name}"' in page
    assert '<a href="#stat-unread">1 STAT stud(ies) (MR)' in page  # the open alarm links to its list
    assert "Modalities silent during their scheduled hours (0)" in page
    assert "Final reports without ORU delivered (0)" in page


@pytest.mark.django_db
def test_metrics_count_what_is_stuck_and_the_open_alarm(settings):
    settings.ALARM_STAT_UNREAD_MINUTES = 60
    only_rule(STAT_UNREAD)
    reading.study(priority="STAT", modality="CT", ready_at=timezone.now() - 2 * dt.timedelta(hours=1))
    reading.study(priority="STAT", modality="CT")  # ready just now: within its turnaround
    services.evaluate()
    text = metrics.render().decode()
    assert 'pacs_dangling_items{check="stat_unread",interface="CT"} 1.0' in text
    [age] = [line for line in text.splitlines()
             if line.startswith('pacs_dangling_oldest_age_seconds{check="stat_unread",interface="CT"}')]
    assert 7190 < float(age.split()[-1]) < 7300
    assert 'pacs_alarm_open{interface="CT",kind="stat_unread",rule="stat_unread"} 1.0' in text
    assert 'check="oru_undelivered"' not in text  # nothing stuck there: no series
