"""hl7gateway.limits counts structure on the raw bytes, whatever the segment terminators and
separators, exactly as the parser would split them."""

from __future__ import annotations

import pytest

from hl7gateway import limits, senders
from hl7gateway.parsing import read_msh, split_segments

MSH = b"MSH|^~\\&|EPIC|H|PACS|R|20250301||ORM^O01|C1|P|2.3.1"
BODY = [b"PID|1||A^^^X^MR~B^^^X^MR~C^^^X^MR||Doe^J", b"ORC|NW|1", b"OBR|1|1", b"OBR|2|1", b"NTE|1||OBR text"]


@pytest.mark.parametrize("terminator", [b"\r", b"\n", b"\r\n"])
@pytest.mark.parametrize("trailing", [True, False])
def test_counts_match_the_parser(terminator, trailing):
    raw = terminator.join([MSH, *BODY]) + (terminator if trailing else b"")
    assert limits.segment_count(raw) == len(split_segments(raw)) == 6
    assert limits.segments_named(raw, b"OBR") == 2
    assert limits.first_segment(raw, b"PID") == BODY[0]
    assert limits.pid_3_repetitions(raw, read_msh(raw)) == 3


def test_other_separators_are_read_from_msh():
    raw = b"MSH#*@\\&#EPIC#H#PACS#R#20250301##ORM*O01#C1#P#2.3.1\rPID#1##A*X@B*X@C*X@D*X\r"
    assert limits.pid_3_repetitions(raw, read_msh(raw)) == 4


def test_no_pid_no_repetitions_and_limits_name_their_setting(settings):
    assert limits.pid_3_repetitions(MSH + b"\r", read_msh(MSH)) == 0
    settings.HL7_MAX_PID3_REPETITIONS = 2
    raw = b"\r".join([MSH, *BODY])
    error = limits.check(raw, read_msh(raw))
    assert (error.code, error.location, error.ack_code) == (207, "PID^1^3", "AR")
    assert "HL7_MAX_PID3_REPETITIONS" in error.text
    settings.HL7_MAX_PID3_REPETITIONS = 3
    assert limits.check(raw, read_msh(raw)) is None


@pytest.mark.django_db
def test_remembered_sender_decisions_are_bounded(settings, monkeypatch):
    monkeypatch.setattr(senders, "DECISIONS_KEPT", 50)
    settings.HL7_UNDECLARED_SENDERS_FROM = []
    for i in range(500):
        msh = read_msh(MSH.replace(b"EPIC", f"APP{i}".encode()))
        assert senders.check(msh, "10.0.0.1:2000").code == 103
    assert len(senders.DECLARED.decisions) <= 50
