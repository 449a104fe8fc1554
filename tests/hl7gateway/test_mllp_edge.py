"""The MLLP listener under attack: idle connections, a slow sender, a message with thousands of
repetitions, unusable MSH-1/MSH-2.  Each test reproduces the attack from another host (a client
bound to 127.0.0.2) and shows that the declared EHR (EPIC^SYNTH_HOSP at 127.0.0.1) is answered AA
for its order while it lasts, and that the listener's memory stays bounded (RSS of this process,
which runs the listener, measured before and after)."""

from __future__ import annotations

import itertools
import socket
import threading
import time

import hl7
import pytest

from hl7gateway.models import InboundMessage
from ris.models import Order
from tests.support.hl7 import ack_fields, connect, exchange, new_order, rss_kb, with_control_id
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.socket, pytest.mark.django_db(transaction=True)]

EHR = "127.0.0.1"
ATTACKER = "127.0.0.2"
_seq = itertools.count(1)


@pytest.fixture(autouse=True)
def declared_ehr(settings):
    settings.HL7_SENDERS = f"EPIC^SYNTH_HOSP@{EHR}:orders+patients"


def ehr_order() -> bytes:
    return new_order(f"EHR-{next(_seq)}")


def ehr_is_served(port: int) -> None:
    raw = ehr_order()
    with connect(port, EHR) as sock:
        ack = ack_fields(exchange(sock, raw))
    assert ack["msa_1"] == "AA", ack


def closed_by_peer(sock: socket.socket, timeout: float = 10.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(16) == b""
    except ConnectionResetError:
        return True


def test_idle_connections_from_one_host_do_not_lock_the_ehr_out(listener):
    server = listener(max_connections=20, max_connections_per_address=4, idle_timeout=60)
    before = rss_kb()
    idle = [connect(server.port, ATTACKER) for _ in range(100)]
    try:
        wait_for(lambda: server.stats["refused_per_address"] == 96)
        assert sum(closed_by_peer(s, 0.5) for s in idle[4:]) == 96  # closed at once
        assert len(server._conns) == 4
        for _ in range(3):
            ehr_is_served(server.port)
        grown = rss_kb() - before
        print(f"\nRSS growth with 100 idle connections from one host: {grown} KiB")
        assert grown < 32 * 1024
    finally:
        for s in idle:
            s.close()
    wait_for(lambda: not server._conns)  # the slots are given back


@pytest.mark.parametrize("start, drip", [
    (b"\x0bMSH|^~\\&|EVIL|X|PACS|RADIOLOGY|", b"A"),  # a frame that never ends
    (b"", b"\x00"),  # bytes outside any frame, never a start block
])
def test_a_sender_trickling_bytes_is_cut_at_the_message_deadline(listener, start, drip):
    server = listener(message_deadline=1.5, idle_timeout=60)
    sock = connect(server.port, ATTACKER)
    stop = threading.Event()

    def trickle() -> None:
        try:
            if start:
                sock.sendall(start)
            while not stop.wait(0.25):  # a byte every 0.25 s: the 60 s idle timeout never fires
                sock.sendall(drip)
        except OSError:
            pass

    before = rss_kb()
    began = time.monotonic()
    dripper = threading.Thread(target=trickle, daemon=True)
    dripper.start()
    try:
        ehr_is_served(server.port)  # while the attack runs
        assert closed_by_peer(sock)
        took = time.monotonic() - began
    finally:
        stop.set()
        dripper.join(5)
        sock.close()
    grown = rss_kb() - before
    print(f"\ncut after {took:.2f} s (deadline 1.5 s); RSS growth {grown} KiB")
    assert 1.4 <= took < 6.0
    assert grown < 16 * 1024
    assert server.stats["deadline_cuts"] == 1
    assert not InboundMessage.objects.exclude(sending_application="EPIC").exists()


def test_line_ends_after_a_frame_do_not_start_the_deadline(listener):
    """A sender that writes CR LF after its frame, then waits longer than the deadline before the
    next message, is not cut: only bytes of a message (or junk beyond a few line ends) count."""
    server = listener(message_deadline=1.0, idle_timeout=60)
    with connect(server.port, EHR) as sock, connect(server.port, EHR) as witness:
        assert ack_fields(exchange(sock, ehr_order()))["msa_1"] == "AA"
        sock.sendall(b"\r\n")
        # A witness starts a message after the line ends and never finishes it: the listener
        # cuts it at its deadline, so by the time it is cut the line ends' deadline would have
        # passed too, had they started one (no sleep that hopes the time went by).
        witness.sendall(b"\x0bMSH|")
        assert closed_by_peer(witness)
        wait_for(lambda: server.stats["deadline_cuts"] == 1, 10, message="the witness's cut counted")
        assert ack_fields(exchange(sock, ehr_order()))["msa_1"] == "AA"
    assert server.stats["deadline_cuts"] == 1  # the witness's alone


def pid3_repeated(n: int) -> bytes:
    lines = ehr_order().split(b"\r")
    for k, line in enumerate(lines):
        if line.startswith(b"PID"):
            fields = line.split(b"|")
            fields[3] = b"~".join([fields[3]] + [b"X%d^^^OTHER^MR" % i for i in range(n)])
            lines[k] = b"|".join(fields)
    return b"\r".join(lines)


def obr_groups(n: int) -> bytes:
    raw = ehr_order()
    obr = next(line for line in raw.split(b"\r") if line.startswith(b"OBR"))
    return raw.rstrip(b"\r") + b"\r" + b"\r".join([obr] * n) + b"\r"


def segments(n: int) -> bytes:
    return ehr_order().rstrip(b"\r") + b"\r" + b"\r".join([b"NTE|%d||a note" % i for i in range(n)]) + b"\r"


@pytest.mark.parametrize("build, location, setting", [
    (lambda: pid3_repeated(10_000), "PID^1^3", "HL7_MAX_PID3_REPETITIONS"),
    (lambda: obr_groups(200), "OBR^51^", "HL7_MAX_ORDER_GROUPS"),
    (lambda: segments(5_000), "^^", "HL7_MAX_SEGMENTS"),
])
def test_oversized_structure_is_refused_in_milliseconds(listener, build, location, setting):
    server = listener()
    attack = build()
    with connect(server.port, EHR) as sock:
        exchange(sock, ehr_order())  # warm: connection and caches
        before = rss_kb()
        times = []
        for _ in range(20):
            raw = with_control_id(attack, f"BIG-{next(_seq)}")
            began = time.perf_counter()
            ack = ack_fields(exchange(sock, raw))
            times.append(time.perf_counter() - began)
            assert ack["msa_1"] == "AR" and setting in ack["msa_3"]
            assert ack["err"] == f"ERR|{location}^207&Application internal error&HL70357"  # v2.3.1 ERR-1
        assert ack_fields(exchange(sock, ehr_order()))["msa_1"] == "AA"  # the same connection goes on
        grown = rss_kb() - before
    print(f"\n{setting}: {len(attack)} bytes answered AR in {min(times) * 1000:.1f}-{max(times) * 1000:.1f} ms; "
          f"RSS growth over 20 messages {grown} KiB")
    assert max(times) < 1.0  # parsing and mapping 10,000 repetitions took over 5 s here
    assert grown < 64 * 1024
    assert InboundMessage.objects.filter(status="REJECTED", error_code="207").count() == 20
    assert Order.objects.count() == 2


def with_nul(raw: bytes, segment: bytes, field: int) -> bytes:
    """``raw`` with a NUL (0x00) in the middle of ``segment``'s field ``field`` (HL7 numbering)."""
    lines = raw.split(b"\r")
    for k, line in enumerate(lines):
        if line.startswith(segment):
            fields = line.split(b"|")
            index = field - 1 if segment == b"MSH" else field
            fields[index] = fields[index][:2] + b"\x00" + fields[index][2:]
            lines[k] = b"|".join(fields)
            break
    return b"\r".join(lines)


@pytest.mark.parametrize("segment, field, location", [(b"PID", 5, "PID^1^5"), (b"MSH", 10, "MSH^1^10")])
def test_a_nul_character_is_refused_with_the_field_named_and_the_message_kept(listener, segment, field, location):
    """A NUL cannot be stored as text (PostgreSQL) and no HL7 data type holds it: AR with error 102
    and the field's location, the message stored whole (its bytes), the connection goes on; the
    resend is the stored message's duplicate and gets the same answer (not a database error that
    asks for a resend forever)."""
    server = listener()
    raw = with_nul(ehr_order(), segment, field)
    with connect(server.port, EHR) as sock:
        for _ in range(2):
            ack = ack_fields(exchange(sock, raw))
            assert ack["msa_1"] == "AR" and "NUL character" in ack["msa_3"]
            assert ack["err"] == f"ERR|{location}^102&Data type error&HL70357"
        assert ack_fields(exchange(sock, ehr_order()))["msa_1"] == "AA"
    (kept,) = InboundMessage.objects.filter(status="REJECTED", error_code="102")
    assert bytes(kept.raw) == raw and kept.duplicate_count == 1
    assert Order.objects.count() == 1  # the EHR's good order alone


def test_ehr_is_served_while_another_host_floods_repetitions(listener, settings):
    settings.HL7_SENDERS = f"EPIC^SYNTH_HOSP@{EHR}:orders,EPIC^SYNTH_HOSP@{ATTACKER}:orders"
    server = listener()
    stop = threading.Event()
    sent = []

    def flood() -> None:
        with connect(server.port, ATTACKER) as sock:
            while not stop.is_set():
                sent.append(ack_fields(exchange(sock, with_control_id(pid3_repeated(10_000), f"FL-{next(_seq)}"))))

    flooder = threading.Thread(target=flood, daemon=True)
    before = rss_kb()
    flooder.start()
    try:
        wait_for(lambda: len(sent) >= 3)
        for _ in range(5):
            ehr_is_served(server.port)
    finally:
        stop.set()
        flooder.join(10)
    grown = rss_kb() - before
    print(f"\n{len(sent)} messages of 10,000 PID-3 repetitions during 5 EHR orders; RSS growth {grown} KiB")
    assert sent and all(a["msa_1"] == "AR" for a in sent)
    assert grown < 64 * 1024


@pytest.mark.parametrize("msh", [
    b"MSH|^^^^|EPIC|SYNTH_HOSP|PACS|RADIOLOGY|20250301||ORM^O01|SEP-1|P|2.5.1",  # repeated encoding characters
    b"MSHX^~\\&XEPICXSYNTH_HOSPXPACSXRADIOLOGYX20250301XXORM^O01XSEP-2XPX2.5.1",  # a letter as field separator
    b"MSH|^~|&|EPIC|SYNTH_HOSP|PACS|RADIOLOGY|20250301||ORM^O01|SEP-3|P|2.5.1",  # MSH-2 too short
    b"MSH|\x01~\\&|EPIC|SYNTH_HOSP|||||ORM^O01|SEP-4|P|2.5.1",  # a control character
])
def test_ack_is_parseable_when_msh_1_or_msh_2_are_not_valid_separators(listener, msh):
    server = listener()
    with connect(server.port, EHR) as sock:
        ack = exchange(sock, msh + b"\rPID|1||E1\r").decode()
        parsed = hl7.parse(ack)  # python-hl7, as the sender would read it
        assert ack.startswith("MSH|^~\\&|")
        assert str(parsed.segment("MSA")[1]) == "AR"
        assert "102" in str(parsed.segment("ERR"))
        assert ack_fields(exchange(sock, ehr_order()))["msa_1"] == "AA"
