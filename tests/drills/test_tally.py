"""The drills' counting, on made-up observations: each broken promise it must see, it sees (a
drill whose tally could not count a loss would prove nothing)."""

from __future__ import annotations

from tests.support.drills import tally as tallying
from tests.support.drills.traffic import HL7Outcome, SignedReport, StudyOutcome, order_message
from tests.support.mllp_sink import Received


class Rows:
    """A stand-in for the engine's database: each query answered with the rows given for it."""

    def __init__(self, **tables):
        self.tables = tables

    def execute(self, sql: str):
        for name, rows in self.tables.items():
            if f"FROM {name}" in sql:
                return iter(rows)
        raise AssertionError(sql)


def _applied(n: int, *, sends=1, unanswered=0) -> HL7Outcome:
    return HL7Outcome(order_message("00AB", n, 3), sends=sends, unanswered=unanswered, answers=["AA"], final="AA")


def _db(outcomes, *, drop=(), twice=()):
    inbound, orders, procedures = [], [], []
    for o in outcomes:
        m = o.message
        if m.control_id in drop:
            continue
        for _ in range(2 if m.control_id in twice else 1):
            inbound.append(("EPIC", "SYNTH_HOSP", m.control_id, "APPLIED"))
            orders.append((m.placer,))
        procedures += [(a,) for a in m.accessions]
    return Rows(hl7gateway_inboundmessage=inbound, ris_order=orders, ris_requestedprocedure=procedures)


def test_hl7_answered_aa_and_not_stored_is_counted():
    outcomes = [_applied(n) for n in range(1, 6)]
    lost = outcomes[2].message.control_id
    tally = tallying.Tally()
    tallying.count_hl7(tally, _db(outcomes, drop={lost}), outcomes)
    assert tally.figures["hl7_aa"] == 5
    assert tally.figures["hl7_aa_not_applied_once"] == 1
    assert tally.losses() == {"hl7_aa_not_applied_once": 1}
    assert lost in tally.details["hl7_aa_not_applied_once"][0]


def test_hl7_resend_applied_twice_is_a_duplicate():
    outcomes = [_applied(1), _applied(2, sends=2, unanswered=1)]
    tally = tallying.Tally()
    tallying.count_hl7(tally, _db(outcomes, twice={outcomes[1].message.control_id}), outcomes)
    assert tally.figures["hl7_resent_after_lost_ack"] == 1
    assert tally.figures["hl7_resend_duplicates"] == 2  # a second log row and a second order
    assert tally.figures["hl7_aa_not_applied_once"] == 1


def _exam(n: int, **told) -> StudyOutcome:
    return StudyOutcome(f"1.2.3.{n}", [], [], accession=f"ACC{n}", mpps_uid=f"1.2.3.{n}.9", **told)


def test_worklist_answered_without_the_order_is_counted():
    exams = [_exam(1, mwl_answered=True, mwl_found=True), _exam(2, mwl_answered=True, mwl_found=False),
             _exam(3, mwl_answered=False)]
    tally = tallying.Tally()
    tallying.count_worklist(tally, exams)
    assert tally.figures["mwl_answered"] == 2
    assert tally.losses() == {"mwl_answered_without_order": 1}
    assert tally.details["mwl_answered_without_order"] == ["ACC2"]


def test_mpps_answered_success_and_not_stored_so_is_counted():
    exams = [_exam(1, mpps_created="Success", mpps_completed="Success"),  # stored COMPLETED: kept
             _exam(2, mpps_created="Success", mpps_completed="Success"),  # stored IN PROGRESS: lost N-SET
             _exam(3, mpps_created="Duplicate"),  # resend answered 0111, yet no row: lost N-CREATE
             _exam(4, mpps_created="Success", mpps_completed="A710")]  # resend answered A710: kept
    db = Rows(pacs_performedprocedurestep=[("1.2.3.1.9", "COMPLETED"), ("1.2.3.2.9", "IN PROGRESS"),
                                            ("1.2.3.4.9", "COMPLETED")])
    tally = tallying.Tally()
    tallying.count_mpps(tally, db, exams)
    assert tally.figures["mpps_success"] == 5
    assert tally.losses() == {"mpps_success_not_stored": 2}
    assert [line.split(":")[0] for line in tally.details["mpps_success_not_stored"]] == ["1.2.3.2.9", "1.2.3.3.9"]


def _oru(control_id: str, accession: str, answer: str = "AA", index: int = 0) -> Received:
    payload = (f"MSH|^~\\&|PACS|RADIOLOGY|EHR|HOSP|20260301||ORU^R01|{control_id}|P|2.5.1\r"
               "PID|1||P1^^^H^MR\r"
               f"OBR|1|||CT^CT||||||||||||||{accession}|||||||F\r").encode()
    return Received(payload, control_id, answer, float(index))


class Sink:
    def __init__(self, *received):
        self.received = list(received)


def test_oru_missing_twice_or_out_of_order_is_counted():
    signed = [SignedReport("ACC1", "P1", 0, "201"), SignedReport("ACC2", "P1", 1, "201"),
              SignedReport("ACC3", "P2", 2, "GET"), SignedReport("ACC4", "P3", 3, "201")]
    sinks = {
        # ACC2 before ACC1 for patient P1; ACC3 under two MSH-10s; ACC4 only answered AR (not delivered).
        "ehr": Sink(_oru("M2", "ACC2"), _oru("M1", "ACC1"), _oru("M3", "ACC3"), _oru("M3b", "ACC3"),
                    _oru("M4", "ACC4", answer="AR")),
        # Everything once and in order; M1 received again under its own MSH-10 (a resend).
        "billing": Sink(_oru("M1", "ACC1"), _oru("M1", "ACC1"), _oru("M2", "ACC2"), _oru("M3", "ACC3"),
                        _oru("M4", "ACC4")),
    }
    tally = tallying.Tally()
    tallying.count_oru(tally, signed, sinks)
    assert tally.figures["oru_not_exactly_once"] == 2  # ehr: ACC3 twice, ACC4 never
    assert tally.figures["oru_out_of_order"] == 1  # ehr: patient P1
    assert tally.figures["oru_same_msh10_redelivered"] == 1  # billing: M1 again, which the receiver dedupes
    assert set(tally.losses()) == {"oru_not_exactly_once", "oru_out_of_order"}


def test_the_table_marks_the_columns_that_must_be_zero():
    tally = tallying.Tally(figures={"hl7_aa": 3, "hl7_aa_not_applied_once": 0})
    text = tallying.table(tally)
    assert "| HL7 messages answered AA | 3 |  |" in text
    assert "| answered AA, not applied exactly once | 0 | yes |" in text
