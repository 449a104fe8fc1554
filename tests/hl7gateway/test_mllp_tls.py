"""MLLP over TLS inbound: the real listener with ``project.tls.server_context``, driven by Python's
``ssl`` module as the EHR's client (a third-party TLS stack, not the engine's client), with
certificates of a test CA (``tests.support.tls_certs``)."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audit import trail
from audit.models import AuditRecord
from hl7gateway import senders
from hl7gateway.mllp import frame
from hl7gateway.models import InboundMessage
from project.auditing import events
from project.tls import server_context
from ris.models import Order
from tests.support.hl7 import ack_fields, fixture, new_order, recv_frame
from tests.support.postgres import database_url
from tests.support.tls_certs import TestPKI
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.socket, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pki(tmp_path, settings):
    """A hospital CA, the engine's certificate for 127.0.0.1, in the settings."""
    ca = TestPKI(tmp_path / "ca")
    engine = ca.issue("engine", dns=["localhost"], ips=["127.0.0.1"])
    settings.TLS_CERTIFICATE, settings.TLS_PRIVATE_KEY = str(engine.chain), str(engine.key)
    settings.TLS_CA_CERTIFICATES = str(ca.ca_file)
    settings.HL7_SENDERS = "EPIC^SYNTH_HOSP@127.0.0.1:orders+patients"
    settings.HL7_UNDECLARED_SENDERS_FROM = []
    senders.reset()
    yield ca
    senders.reset()


def ehr_context(pki: TestPKI, certificate=None) -> ssl.SSLContext:
    """The EHR's client context: trusts the hospital CA, presents ``certificate`` if given."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if certificate is not None:
        context.load_cert_chain(str(certificate.chain), str(certificate.key))
    return context


def tls_connect(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(sock, server_hostname="127.0.0.1")


def order(i: int) -> bytes:
    """A new order (its own numbers) with MSH-10 TLS<i>."""
    return new_order(f"TLS{i:05d}")


def exchange(sock, raw: bytes) -> dict:
    sock.sendall(frame(raw))
    return ack_fields(recv_frame(sock))


def refused(port: int, context: ssl.SSLContext) -> str:
    """Connect, handshake and send an order; return how the listener ended it (it must never answer).

    In TLS 1.3 the client finishes its side of the handshake before the server has checked the
    client's certificate: the server's refusal arrives as an alert on the first read."""
    try:
        with tls_connect(port, context) as sock:
            sock.sendall(frame(order(999)))
            data = sock.recv(65536)
    except (ssl.SSLError, ConnectionError) as exc:
        return type(exc).__name__ + ": " + str(exc)
    assert data == b"", f"the listener answered a refused client: {data[:80]!r}"
    return "closed"


def counted(server, stat: str, expected: int, timeout: float = 10.0) -> bool:
    """The listener's count reaches ``expected`` (its thread counts right after the alert it sent,
    which the client may read first)."""
    deadline = time.monotonic() + timeout
    while server.stats[stat] < expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return server.stats[stat] == expected


def test_order_over_tls_is_acked_aa_and_stored(listener, pki):
    ehr = pki.issue("ehr.hospital.test")
    server = listener(tls_context=server_context("required"))
    with tls_connect(server.port, ehr_context(pki, ehr)) as sock:
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        ack = exchange(sock, fixture("epic_orm_o01_nw.hl7"))
    assert ack["msa_1"] == "AA" and ack["msa_2"] == "EPC000101"
    assert Order.objects.filter(placer_order_number="P10001").exists()
    assert InboundMessage.objects.get().status == "APPLIED"
    assert counted(server, "tls_refused", 0)


def test_tls_listener_with_optional_client_certificates_serves_a_client_without_one(listener, pki):
    server = listener(tls_context=server_context("optional"))
    with tls_connect(server.port, ehr_context(pki)) as sock:
        assert exchange(sock, order(1))["msa_1"] == "AA"
    untrusted = TestPKI(pki.directory.parent / "other").issue("intruder")
    assert refused(server.port, ehr_context(pki, untrusted))  # optional: a certificate shown is still verified
    assert counted(server, "tls_refused", 1)


@pytest.mark.parametrize("who", ["no certificate", "untrusted CA", "expired"])
def test_client_refused_at_the_handshake_while_the_declared_ehr_is_served(listener, pki, who):
    ehr = pki.issue("ehr.hospital.test")
    other = TestPKI(pki.directory.parent / "other")
    certificate = {"no certificate": None, "untrusted CA": other.issue("fake-ehr.hospital.test"),
                   "expired": pki.issue("old-ehr.hospital.test", expired=True)}[who]
    server = listener(tls_context=server_context("required"))
    with tls_connect(server.port, ehr_context(pki, ehr)) as declared:
        assert exchange(declared, order(1))["msa_1"] == "AA"
        for _ in range(3):
            assert refused(server.port, ehr_context(pki, certificate))
        assert exchange(declared, order(2))["msa_1"] == "AA"  # the EHR's connection is untouched
    assert counted(server, "tls_refused", 3)
    assert sorted(InboundMessage.objects.values_list("message_control_id", flat=True)) == ["TLS00001", "TLS00002"]
    assert Order.objects.count() == 2
    # each refusal is a Security Alert on the audit trail (PS3.15 A.5.3.11, Node Authentication)
    # The listener counts a refusal and then hands its record to the writer thread: wait for the
    # third record to be handed over and written, not only for the count.
    deadline = time.monotonic() + 15
    while True:
        trail.flush()
        alerts = list(AuditRecord.records.filter(event_id=events.SECURITY_ALERT.value))
        if len(alerts) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [(a.actor_kind, a.source_address, a.outcome, a.event_type) for a in alerts] == [
        ("hl7", "127.0.0.1", events.SERIOUS_FAILURE, events.NODE_AUTHENTICATION.value)] * 3


def test_clear_text_client_on_the_tls_port_is_cut_without_an_answer(listener, pki):
    server = listener(tls_context=server_context("none"), message_deadline=5.0)
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        started = time.monotonic()
        sock.sendall(frame(order(3)))
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            data = b""
        elapsed = time.monotonic() - started
    assert b"MSA" not in data  # at most a TLS alert record, never an ACK
    assert elapsed < 5.0  # not a TLS ClientHello: ended at once, well within the deadline
    assert counted(server, "tls_refused", 1)
    assert InboundMessage.objects.count() == 0


def _client_hello() -> bytes:
    """The bytes of a real TLS ClientHello (Python's ``ssl`` over memory BIOs)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("how", ["silent", "trickling"])
def test_handshake_not_finished_within_the_deadline_is_cut(listener, pki, how):
    """A client that connects and says nothing, or sends its ClientHello a byte at a time, holds
    its slot no longer than HL7_MESSAGE_DEADLINE_SECONDS for the whole handshake."""
    deadline = 1.5
    server = listener(tls_context=server_context("none"), message_deadline=deadline)
    hello = _client_hello()
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        started = time.monotonic()
        if how == "trickling":
            sock.settimeout(0.3)
            for byte in hello:  # far more bytes than the deadline lets through at this pace
                try:
                    sock.sendall(bytes([byte]))
                    if sock.recv(1) == b"":
                        break
                except TimeoutError:
                    continue
                except OSError:
                    break
        else:
            sock.settimeout(20)
            try:
                assert sock.recv(1) == b""
            except ConnectionResetError:
                pass
        elapsed = time.monotonic() - started
    assert deadline - 0.1 <= elapsed < deadline + 4.0
    assert len(hello) * 0.3 > deadline + 4.0  # the trickle alone would have taken longer
    assert counted(server, "tls_refused", 1) and server.stats["deadline_cuts"] == 1


def test_run_mllp_opens_the_tls_port_next_to_the_clear_one(pki, settings):
    env = {**os.environ, "DATABASE_URL": database_url(), "PYTHONUNBUFFERED": "1",
           "TLS_CERTIFICATE": settings.TLS_CERTIFICATE, "TLS_PRIVATE_KEY": settings.TLS_PRIVATE_KEY,
           "TLS_CA_CERTIFICATES": settings.TLS_CA_CERTIFICATES, "HL7_MLLP_TLS_CLIENT_CERTIFICATES": "required"}
    with socket.socket() as probe:  # --tls-port 0 means off: take a free port
        probe.bind(("127.0.0.1", 0))
        tls_port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "manage.py", "run_mllp", "--host", "127.0.0.1", "--port", "0",
                             "--tls-port", str(tls_port), "--workers", "2"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert f"tls={tls_port} client_certificates=required" in line and "workers=2" in line, line
        port = int(line.split(":")[-1].split()[0])
        ehr = pki.issue("ehr.hospital.test")
        for i in range(4):  # connections spread by the kernel over both processes
            with tls_connect(tls_port, ehr_context(pki, ehr)) as sock:
                assert exchange(sock, order(10 + i))["msa_1"] == "AA"
        assert refused(tls_port, ehr_context(pki))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            assert exchange(sock, order(20))["msa_1"] == "AA"  # the clear port still serves
    finally:
        proc.terminate()
        proc.wait(10)
    assert InboundMessage.objects.filter(status="APPLIED").count() == Order.objects.count() == 5


def test_check_e104_names_what_the_tls_port_lacks(settings, tmp_path):
    from hl7gateway.checks import check_mllp_tls_settings

    settings.HL7_MLLP_TLS_PORT, settings.TLS_CERTIFICATE, settings.TLS_PRIVATE_KEY = 2576, "", ""
    settings.HL7_MLLP_TLS_CLIENT_CERTIFICATES = "none"
    assert "TLS_CERTIFICATE" in check_mllp_tls_settings(None)[0].msg
    settings.TLS_CERTIFICATE, settings.TLS_PRIVATE_KEY = "/etc/pacs/engine.crt", "/etc/pacs/engine.key"
    assert check_mllp_tls_settings(None) == []
    settings.HL7_MLLP_TLS_CLIENT_CERTIFICATES, settings.TLS_CA_CERTIFICATES = "required", ""
    assert "TLS_CA_CERTIFICATES" in check_mllp_tls_settings(None)[0].msg
    settings.HL7_MLLP_TLS_CLIENT_CERTIFICATES = "sometimes"
    assert [e.id for e in check_mllp_tls_settings(None)] == ["hl7gateway.E104"]
    settings.HL7_MLLP_TLS_PORT = 0
    assert [e.id for e in check_mllp_tls_settings(None)] == ["hl7gateway.E104"]  # a bad value is wrong anyway
    settings.HL7_MLLP_TLS_CLIENT_CERTIFICATES = "required"
    assert check_mllp_tls_settings(None) == []


def test_per_address_cap_holds_on_the_tls_port_before_the_handshake(listener, pki):
    """A slot is taken at accept, before the handshake: connections that never start TLS count
    against HL7_MAX_CONNECTIONS_PER_ADDRESS like any other, and the next one is closed at once."""
    server = listener(tls_context=server_context("none"), max_connections_per_address=2, message_deadline=30.0)
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(2)]
    try:
        assert counted(server, "connections", 2)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as third:
            try:
                assert third.recv(1) == b""  # closed by the listener, no handshake attempted
            except ConnectionResetError:
                pass
        assert counted(server, "refused_per_address", 1)
    finally:
        for sock in held:
            sock.close()
    assert counted(server, "tls_refused", 2)  # closed before any handshake: their slots are freed
    wait_for(lambda: not server._conns, 10, message="the two slots given back")  # counted before freed
    with tls_connect(server.port, ehr_context(pki)) as sock:  # the slots are free again
        assert exchange(sock, order(30))["msa_1"] == "AA"
