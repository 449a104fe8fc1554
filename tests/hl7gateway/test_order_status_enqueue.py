"""Order status to the order placer (IHE RAD-3): every trigger queues exactly one ORM^O01 /
OMI^O23 per destination that takes order status, in the transaction of the change that causes it
-- the first MPPS IN PROGRESS, the study complete (MPPS COMPLETED or the quiet period), a step
discontinued, the report final -- and nothing for results-only destinations, for changes the
placer asked for itself, or for a change that rolled back."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import transaction
from django.utils import timezone
from pydicom.uid import generate_uid

from hl7gateway.intake import handle_payload
from hl7gateway.models import OutboundDestination, OutboundMessage
from hl7gateway.outbox import destinations, enqueue, publish
from pacs.services import completion, mpps
from ris.models import RequestedProcedure, ScheduledProcedureStep
from tests.factories import make_patient, make_step, received_study
from tests.factories import oru as h
from tests.support.hl7 import ack_fields, fixture
from tests.support.mpps import completion_dataset, n_create_dataset

pytestmark = pytest.mark.django_db


class Boom(Exception):
    pass


@pytest.fixture
def dests():
    """The EHR in v2.3.1 and a second placer-side system in v2.5.1 take order status; billing
    takes results only (the default)."""
    return {
        "ehr": h.destination("ehr", 2577, hl7_version="2.3.1", sends_order_status=True),
        "ris2": h.destination("ris2", 2578, hl7_version="2.5.1", sends_order_status=True, sends_results=False),
        "billing": h.destination("billing", 2576),
    }


@pytest.fixture
def step(db):
    return make_step(make_patient("DOE^JOHN", "P1"), accession="ACC1", modality="CT", station="CT1")


def fields(row: OutboundMessage, segment: str) -> list[str]:
    for seg in bytes(row.payload).decode().split("\r"):
        if seg.startswith(segment + "|"):
            return seg.split("|")
    raise AssertionError(f"no {segment}")


def status_rows(**filters) -> list[OutboundMessage]:
    return list(OutboundMessage.objects.filter(kind="STATUS", **filters).select_related("destination")
                .order_by("destination__name"))


def start(step) -> str:
    uid = generate_uid()
    mpps.create(uid, n_create_dataset(step).to_json_dict(), calling_ae_title="CT1")
    return uid


def assert_one_per_status_destination(rows, dests, rp, orc5: str) -> None:
    """One row for ehr (ORM^O01, v2.3.1) and one for ris2 (OMI^O23, v2.5.1), none for billing."""
    assert [r.destination.name for r in rows] == ["ehr", "ris2"]
    ehr, ris2 = rows
    for row in rows:
        assert row.order_status == orc5 and row.requested_procedure_id == rp.pk
        assert row.patient_id == rp.order.patient_id and row.accession_number == rp.accession_number
        assert row.report_version_id is None and row.status == "PENDING"
        orc = fields(row, "ORC")
        assert (orc[1], orc[5]) == ("SC", orc5)
        assert orc[2].split("^")[0] == rp.order.placer_order_number
        assert orc[3].split("^")[0] == rp.order.filler_order_number
        assert orc[9]  # ORC-9, the time of the change
        obr = fields(row, "OBR")
        assert obr[2] == orc[2] and obr[3] == orc[3]
    assert (ehr.message_type, fields(ehr, "MSH")[8], fields(ehr, "OBR")[18]) == (
        "ORM^O01", "ORM^O01", rp.accession_number)
    assert (ris2.message_type, fields(ris2, "MSH")[8], fields(ris2, "IPC")[1]) == (
        "OMI^O23", "OMI^O23^OMI_O23", rp.accession_number)


# --- the triggers ---------------------------------------------------------------------------------
def test_first_mpps_in_progress_sends_ip_once(dests, step):
    rp = step.requested_procedure
    second = ScheduledProcedureStep.objects.create(requested_procedure=rp, scheduled_procedure_step_id="SPS-2",
                                                   modality="CT", scheduled_start=timezone.now())
    start(step)
    assert_one_per_status_destination(status_rows(), dests, rp, "IP")
    assert {r.status_event for r in status_rows()} == {"started"}
    start(second)  # the procedure's second step starting is no news for the placer
    assert len(status_rows()) == 2


def test_mpps_completed_with_every_image_stored_sends_cm(dests, step):
    rp = step.requested_procedure
    received_study(rp)  # the images arrived; the MPPS lists none, so it alone says complete
    uid = start(step)
    ds, _ = completion_dataset(n_images=0)
    mpps.update(uid, ds.to_json_dict(), calling_ae_title="CT1")
    rows = status_rows(status_event="exam-complete")
    assert_one_per_status_destination(rows, dests, rp, "CM")
    assert fields(rows[0], "OBR")[25:26] in ([], [""])  # no result yet


def test_quiet_period_completion_sends_cm_once_even_when_the_study_completes_again(dests, step):
    rp = step.requested_procedure
    study = received_study(rp, last_received_at=timezone.now() - dt.timedelta(hours=1))
    assert completion.sweep_quiet_studies() == 1
    assert_one_per_status_destination(status_rows(status_event="exam-complete"), dests, rp, "CM")
    # A late instance re-opens the study; its completion sends only the instance, tells nobody.
    from ris.services.transitions import transition

    study.refresh_from_db()
    transition(study, "RECEIVING", entity="study", cause="late instance", actor="test")
    assert completion.sweep_quiet_studies() == 1
    assert len(status_rows(status_event="exam-complete")) == 2


def test_mpps_discontinued_sends_dc(dests, step):
    rp = step.requested_procedure
    uid = start(step)
    ds, _ = completion_dataset(status="DISCONTINUED", n_images=0)
    mpps.update(uid, ds.to_json_dict(), calling_ae_title="CT1")
    assert RequestedProcedure.objects.get(pk=rp.pk).status == "DISCONTINUED"
    assert_one_per_status_destination(status_rows(status_event="discontinued"), dests, rp, "DC")


def test_final_report_sends_cm_with_obr25_f_and_the_oru_still_goes_to_billing(dests):
    rp, user = h.study(), h.radiologist()
    h.sign_report(rp, user, "PRELIMINARY")
    assert status_rows() == []  # a preliminary report is not the end of the order
    version = h.sign_report(rp, user, "FINAL")
    rows = status_rows()
    assert_one_per_status_destination(rows, dests, rp, "CM")
    assert [r.status_event for r in rows] == ["report-final"] * 2
    assert [fields(r, "OBR")[25] for r in rows] == ["F", "F"]
    # The results: billing and ehr take them (ris2 does not), exactly as before.
    oru = OutboundMessage.objects.filter(kind="ORU", report_version=version).order_by("destination__name")
    assert [r.destination.name for r in oru] == ["billing", "ehr"]
    assert all(r.message_type == "ORU^R01" and r.requested_procedure_id == rp.pk for r in oru)
    h.sign_report(rp, user, "ADDENDUM")
    assert len(status_rows()) == 2  # an addendum is a corrected result (ORU), not a new status


# --- what does not send -------------------------------------------------------------------------
def test_results_only_destinations_get_no_status(step):
    h.destination("billing", 2576)  # as every destination was before order status existed
    uid = start(step)
    ds, _ = completion_dataset(status="DISCONTINUED", n_images=0)
    mpps.update(uid, ds.to_json_dict(), calling_ae_title="CT1")
    assert OutboundMessage.objects.count() == 0


def test_a_rolled_back_change_queues_nothing_and_wakes_nobody(dests, step, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        with pytest.raises(Boom):
            with transaction.atomic():
                start(step)
                assert len(status_rows()) == 2  # written inside the transaction of the change
                raise Boom
    assert status_rows() == [] and callbacks == []
    assert ScheduledProcedureStep.objects.get(pk=step.pk).status == "SCHEDULED"


def test_a_committed_change_wakes_each_status_destination_after_the_commit(
        dests, step, django_capture_on_commit_callbacks, monkeypatch):
    woken: list[int] = []
    monkeypatch.setattr(publish, "wake", lambda ids: woken.extend(ids))
    with django_capture_on_commit_callbacks(execute=True):
        start(step)
    assert sorted(woken) == sorted([dests["ehr"].pk, dests["ris2"].pk])


@pytest.mark.parametrize("change", ["epic_orm_o01_dc.hl7", "epic_orm_o01_sc_ip.hl7"])
def test_a_change_the_placer_sent_is_not_echoed_back(dests, change):
    assert ack_fields(handle_payload(fixture("epic_orm_o01_nw.hl7")))["msa_1"] == "AA"
    assert ack_fields(handle_payload(fixture(change)))["msa_1"] == "AA"
    rp = RequestedProcedure.objects.get(steps__scheduled_procedure_step_id="SPS100001")
    assert rp.status in ("DISCONTINUED", "IN_PROGRESS")  # the change was applied ...
    assert status_rows() == []  # ... and the placer, who sent it, is not told


def test_a_disabled_destination_gets_nothing_and_enqueue_twice_adds_nothing(dests, step):
    OutboundDestination.objects.filter(name="ris2").update(enabled=False)
    start(step)
    assert [r.destination.name for r in status_rows()] == ["ehr"]
    assert enqueue.enqueue_status(step.requested_procedure_id, "started") == 0


# --- destinations declared in the environment --------------------------------------------------------
def test_declared_destinations_choose_their_message_kinds(settings):
    settings.HL7_ORU_DESTINATIONS = ("billing=mllp://b:2576,ehr=mllp://e:2577?version=2.3.1&messages=oru,status"
                                     "&links=viewer,wado,placer=mllps://p:2578?messages=status")
    destinations.sync_environment_destinations()
    got = {d.name: (d.sends_results, d.sends_order_status, d.link_viewer, d.link_wado_rs, d.tls)
           for d in OutboundDestination.objects.all()}
    assert got == {"billing": (True, False, False, False, False), "ehr": (True, True, True, True, False),
                   "placer": (False, True, False, False, True)}
    # The environment decides these for its destinations: removing the option turns it off again.
    settings.HL7_ORU_DESTINATIONS = "billing=mllp://b:2576,ehr=mllp://e:2577,placer=mllps://p:2578?messages=status"
    destinations.sync_environment_destinations()
    ehr = OutboundDestination.objects.get(name="ehr")
    assert (ehr.sends_results, ehr.sends_order_status, ehr.link_viewer) == (True, False, False)


@pytest.mark.parametrize("value,message", [
    ("ehr=mllp://h:1?messages=", "messages must be a comma-separated list of oru, status"),
    ("ehr=mllp://h:1?messages=oru,fax", "messages must be a comma-separated list of oru, status"),
    ("ehr=mllp://h:1?links=viewer,pdf", "links must be a comma-separated list of viewer, wado"),
])
def test_bad_message_kinds_are_named(value, message):
    with pytest.raises(ValueError, match=message):
        destinations.parse_destinations(value)
