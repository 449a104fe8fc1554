"""monitoring.journey.timeline: a pure function over rows -- order of the hand-offs and the
overdue rules (images not committed by the VNA; an ORU never acknowledged; a final report
with no ORU queued), with plain objects and a fixed ``now``."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace as Row

from monitoring.journey import FAILED, WAITING, Rows, timeline

T0 = dt.datetime(2026, 11, 26, 8, 0, tzinfo=dt.UTC)
LIMITS = {"vna_overdue": dt.timedelta(minutes=60), "oru_ack_overdue": dt.timedelta(minutes=30)}


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def study(**kw):
    base = dict(pk=1, first_received_at=at(10), last_received_at=at(12), calling_ae_title="CT1", instance_count=3,
                requested_procedure_id=7, match_method="accession", completed_at=at(13), archived_at=None,
                status="COMPLETE", get_match_method_display=lambda: "accession number")
    base.update(kw)
    return Row(**base)


def transfer(status, **kw):
    base = dict(pk=5, study_id=1, destination=Row(name="vna"), destination_id=1, batch=1, status=status,
                created_at=at(13), finished_at=at(14) if status in ("COMMITTED", "FAILED") else None,
                updated_at=at(14), reason="")
    base.update(kw)
    return Row(**base)


def oru(status, **kw):
    base = dict(pk=9, destination=Row(name="billing"), destination_id=2, report_version_id=3, result_status="F",
                kind="ORU", message_type="ORU^R01", order_status="", order_control="", placer_order_number="",
                message_control_id="PACS9", status=status, created_at=at(40), delivered_at=None, updated_at=at(40),
                last_error="")
    base.update(kw)
    return Row(**base)


def signed(**kw):
    base = dict(pk=3, report_id=1, version_number=1, kind="FINAL", result_status="F", signed_at=at(40),
                signed_by=Row(username="rad1"), signer_name="RAD^ONE")
    base.update(kw)
    return Row(**base)


def run(rows, now):
    return timeline(rows, now=now, **LIMITS)


def test_images_not_archived_after_the_threshold_are_overdue_and_not_before():
    rows = Rows(accession="A1", studies=[study()])
    assert not any(s.overdue for s in run(rows, at(12 + 59)))
    steps = run(rows, at(12 + 61))
    (late,) = [s for s in steps if s.overdue]
    assert late.kind == "vna" and late.state == WAITING and late.at is None
    assert "images arrived 61 min ago and nothing queued for the VNA" in late.overdue_reason
    assert steps[-1] is late  # steps still expected come last


def test_a_queued_but_uncommitted_transfer_is_overdue_and_a_committed_one_is_not():
    rows = Rows(accession="A1", studies=[study()], transfers=[transfer("COMMITTING")])
    (late,) = [s for s in run(rows, at(200)) if s.overdue]
    assert "not committed by the VNA" in late.overdue_reason
    rows.transfers = [transfer("COMMITTED")]
    steps = run(rows, at(200))
    assert not any(s.overdue for s in steps)
    assert [s.label for s in steps if s.kind == "vna"] == ["transfer to VNA vna queued (batch 1)",
                                                          "committed by VNA vna"]


def test_a_failed_transfer_shows_its_reason():
    rows = Rows(accession="A1", studies=[study()], transfers=[transfer("FAILED", reason="0xA700 out of resources")])
    failed = [s for s in run(rows, at(30)) if s.state == FAILED]
    assert failed and failed[0].outcome == "0xA700 out of resources"


def test_oru_never_acknowledged_is_overdue_after_the_threshold():
    rows = Rows(accession="A1", report_versions=[signed()], outbound=[oru("PENDING")],
                outbound_attempts=[Row(message_id=9, number=1, started_at=at(40), finished_at=at(41),
                                       outcome="TIMEOUT", detail="no ACK within 5 s")])
    assert not any(s.overdue for s in run(rows, at(69)))
    steps = run(rows, at(71))
    (late,) = [s for s in steps if s.overdue]
    assert late.label == "ORU^R01 acknowledgement from billing" and "queued 31 min ago" in late.overdue_reason
    attempt = next(s for s in steps if s.label.startswith("ORU^R01 attempt 1"))
    assert attempt.state == FAILED and "TIMEOUT" in attempt.outcome


def test_delivered_oru_is_not_overdue_and_sorts_after_its_attempt():
    rows = Rows(accession="A1", report_versions=[signed()],
                outbound=[oru("DELIVERED", delivered_at=at(41))],
                outbound_attempts=[Row(message_id=9, number=1, started_at=at(41), finished_at=at(41.01),
                                       outcome="AA", detail="")])
    steps = run(rows, at(500))
    assert not any(s.overdue for s in steps)
    assert [s.label for s in steps] == ["report version 1 signed (final)", "ORU^R01 (F) queued for billing",
                                        "ORU^R01 attempt 1 to billing", "ORU^R01 acknowledged by billing"]


def test_final_report_with_no_oru_for_an_enabled_destination_is_overdue():
    rows = Rows(accession="A1", report_versions=[signed()], enabled_destinations=[Row(pk=2, name="billing")])
    (late,) = [s for s in run(rows, at(80)) if s.overdue]
    assert late.outcome == "never queued" and "no ORU queued for billing" in late.overdue_reason
    rows.report_versions = [signed(result_status="P", kind="PRELIMINARY")]
    assert not any(s.overdue for s in run(rows, at(80)))


def test_steps_created_by_the_order_sort_after_the_order_message():
    """The step row is written while its message is applied, a moment before the message row."""
    msg = Row(message_type="ORM^O01", status="APPLIED", received_at=at(0.001), replay_of_id=None,
              sending_application="EPIC", sending_facility="HOSP", peer="", ack_code="AA",
              message_control_id="M1", error_text="")
    sps = Row(created_at=at(0), scheduled_procedure_step_id="S1", modality="CT", scheduled_station_ae_title="CT1",
              scheduled_start=at(60))
    steps = run(Rows(accession="A1", inbound=[msg], steps=[sps]), at(1))
    assert [s.kind for s in steps] == ["order", "scheduled"]
    assert steps[0].peer == "EPIC^HOSP" and steps[0].outcome.startswith("APPLIED, ACK AA")
    assert steps[1].at == at(0)  # shown with its own time


def test_unmatched_study_is_waiting_for_reconciliation():
    rows = Rows(accession="A1", studies=[study(requested_procedure_id=None, match_method="", completed_at=None)])
    steps = run(rows, at(20))
    assert any(s.kind == "match" and s.state == WAITING for s in steps)


def test_an_operator_retry_of_the_oru_is_a_step_with_who_and_why():
    rows = Rows(accession="A1", report_versions=[signed()], outbound=[oru("PENDING", created_at=at(40))],
                outbound_actions=[Row(message_id=9, at=at(50), action="RETRY", username="olga",
                                      reason="billing back online")])
    step = next(s for s in run(rows, at(51)) if "operator retry" in s.label)
    assert (step.peer, step.outcome, step.at) == ("olga", "billing back online", at(50))


def test_an_order_status_row_is_a_step_of_its_own_kind_with_its_message_type_and_orc5():
    rows = Rows(accession="A1", outbound=[oru("DELIVERED", kind="STATUS", message_type="ORM^O01", order_status="CM",
                                              report_version_id=None, result_status="", delivered_at=at(41))])
    labels = [(s.kind, s.label) for s in run(rows, at(50))]
    assert labels == [("order-status", "ORM^O01 (ORC-5 CM) queued for billing"),
                      ("order-status", "ORM^O01 acknowledged by billing")]


def test_a_filler_order_row_names_orc1_sn_and_the_placer_number_assigned():
    rows = Rows(accession="A1", outbound=[oru("DELIVERED", kind="STATUS", message_type="ORM^O01", order_status="CM",
                                              order_control="SN", placer_order_number="PL7^EHR",
                                              report_version_id=None, result_status="", delivered_at=at(41))])
    (queued, _) = run(rows, at(50))
    assert (queued.kind, queued.label) == (
        "order-status", "ORM^O01 (ORC-1 SN, new filler order, ORC-2 PL7^EHR assigned) queued for billing")


def test_a_charge_row_is_a_step_with_its_kind_and_transaction_type():
    rows = Rows(accession="A1", outbound=[oru("PENDING", kind="CHARGE", message_type="DFT^P03", charge_kind="technical",
                                              transaction_type="CD", report_version_id=None, result_status="")])
    (queued, waiting) = run(rows, at(41))
    assert (queued.kind, queued.label) == ("charge", "DFT^P03 (technical CD) queued for billing")
    assert (waiting.kind, waiting.state) == ("charge", WAITING)
