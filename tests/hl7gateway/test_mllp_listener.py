"""Tier 3: the real MLLP listener on an ephemeral port, driven by python-hl7's MLLP client
(``hl7.client.MLLPClient``, a third-party client) and by raw sockets for malformed input."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hl7.client import MLLPClient

from hl7gateway.models import InboundMessage
from ris.models import Order, RequestedProcedure, ScheduledProcedureStep
from tests.support.hl7 import ack_fields, fixture, recv_frame, unframe, with_control_id
from tests.support.postgres import database_url
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.socket, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]


def send(port: int, raw: bytes) -> dict:
    with MLLPClient("127.0.0.1", port) as client:
        return ack_fields(unframe(client.send_message(raw)))


def orm(i: int, placer: str | None = None) -> bytes:
    """A small ORM^O01 (small-vendor style) with its own control ID and placer number."""
    raw = fixture("smallvendor_orm_o01_nw_lf.hl7").replace(b"SV30001", (placer or f"PL{i:06d}").encode())
    return with_control_id(raw, f"C{i:06d}")


def test_order_sent_with_python_hl7_client_is_stored_then_acknowledged(listener):
    server = listener()
    ack = send(server.port, fixture("epic_orm_o01_nw.hl7"))
    assert ack["msa_1"] == "AA" and ack["msa_2"] == "EPC000101" and ack["msh_9"] == "ACK^O01^ACK"
    # visible with patient, accession numbers and steps once the ACK is back
    order = Order.objects.get(placer_order_number="P10001")
    assert order.patient.identifiers.filter(id_number="E1000001").exists()
    assert sorted(RequestedProcedure.objects.filter(order=order).values_list("accession_number", flat=True)) == [
        "EA100001", "EA100002"]
    assert ScheduledProcedureStep.objects.filter(requested_procedure__order=order).count() == 2
    row = InboundMessage.objects.get()
    assert row.status == "APPLIED" and row.peer.startswith("127.0.0.1:")


def test_many_messages_on_one_connection_are_applied_in_order(listener):
    server = listener()
    with MLLPClient("127.0.0.1", server.port) as client:
        acks = [ack_fields(unframe(client.send_message(fixture(name)))) for name in (
            "epic_orm_o01_nw.hl7", "epic_orm_o01_sc_ip.hl7", "epic_orm_o01_xo_cm.hl7", "epic_orm_o01_ca.hl7")]
    # A cancel after completion is accepted: the exam stays completed, the order carries the cancel.
    assert [a["msa_1"] for a in acks] == ["AA", "AA", "AA", "AA"]
    assert ScheduledProcedureStep.objects.get(scheduled_procedure_step_id="SPS100001").status == "COMPLETED"
    assert acks[3]["msa_2"] == "EPC000102" and acks[3]["err"] is None
    assert RequestedProcedure.objects.get(accession_number="EA100001").placer_status == "CANCELED"


def test_duplicate_resend_gets_stored_ack_and_changes_nothing(listener):
    server = listener()
    raw = fixture("omi_o23_nw.hl7")
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"\x0b" + raw + b"\x1c\r")
        first = recv_frame(s)
        for _ in range(4):
            s.sendall(b"\x0b" + raw + b"\x1c\r")
            assert recv_frame(s) == first
    assert Order.objects.count() == 1 and ScheduledProcedureStep.objects.count() == 2
    assert InboundMessage.objects.get().duplicate_count == 4
    ack = send(server.port, raw.replace(b"Zo\xc3\xab", b"Zoe"))
    assert ack["msa_1"] == "AE" and "205" in ack["err"]
    assert InboundMessage.objects.filter(status="COLLISION").count() == 1


def test_one_byte_per_write_and_two_messages_in_one_write(listener):
    server = listener()
    data = b"\x0b" + orm(1) + b"\x1c\r"
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            s.sendall(data[i:i + 1])
        assert ack_fields(recv_frame(s))["msa_2"] == "C000001"
        s.sendall(b"\x0b" + orm(2) + b"\x1c\r\x0b" + orm(3) + b"\x1c\r")
        assert ack_fields(recv_frame(s))["msa_2"] == "C000002"
        assert ack_fields(recv_frame(s))["msa_2"] == "C000003"
    assert Order.objects.count() == 3


def test_junk_before_start_block_is_skipped_and_fs_without_cr_accepted(listener):
    server = listener()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"\r\n\x00garbage-before-frame\n\x0b" + orm(4) + b"\x1c")  # no CR after FS
        assert ack_fields(recv_frame(s))["msa_1"] == "AA"
        s.sendall(b"\r\x0b" + orm(5) + b"\x1c\r")
        assert ack_fields(recv_frame(s))["msa_1"] == "AA"
    assert server.stats["junk_bytes"] >= len(b"\r\n\x00garbage-before-frame\n")
    assert Order.objects.count() == 2


def test_garbage_frame_gets_ar_and_connection_stays_usable(listener):
    server = listener()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"\x0bthis is not an HL7 message\x1c\r")
        bad = ack_fields(recv_frame(s))
        assert bad["msa_1"] == "AR" and "100" in bad["err"]
        s.sendall(b"\x0b" + orm(6) + b"\x1c\r")
        assert ack_fields(recv_frame(s))["msa_1"] == "AA"
    assert InboundMessage.objects.filter(status="REJECTED").count() == 1


def test_unsupported_version_and_wrong_encoding(listener):
    server = listener()
    ack = send(server.port, fixture("epic_orm_o01_nw.hl7").replace(b"|P|2.3.1|", b"|P|2.1|"))
    assert ack["msa_1"] == "AR" and "203" in ack["err"]
    latin_in_utf8 = fixture("epic_orm_o01_nw.hl7").replace(b"EPC000101", b"ENC1").replace(
        b"Testpatient", "Tëstpatient".encode("latin-1"))
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"\x0b" + latin_in_utf8 + b"\x1c\r")
        ack = recv_frame(s)
    assert b"MSA|AE|ENC1" in ack and b"102" in ack
    assert Order.objects.count() == 0


def test_truncated_frame_is_not_acknowledged_nor_stored(listener):
    server = listener()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"\x0b" + orm(7)[:60])
        s.shutdown(socket.SHUT_WR)
        assert recv_frame(s) is None  # closed without ACK
    # The listener closes a connection only when it is done with its bytes (the end of its read
    # loop): whatever it would have stored is stored before the close this client just read.
    assert InboundMessage.objects.count() == 0 and Order.objects.count() == 0
    assert send(server.port, orm(8))["msa_1"] == "AA"  # the listener is fine


def test_oversize_frame_is_rejected_and_connection_closed(listener):
    server = listener(max_frame_bytes=2048)
    big = orm(9).replace(b"Chest X-ray 2 views", b"X" * 5000)
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"\x0b" + orm(10) + b"\x1c\r\x0b" + big + b"\x1c\r")
        assert ack_fields(recv_frame(s))["msa_1"] == "AA"
        ack = ack_fields(recv_frame(s))
        assert ack["msa_1"] == "AR" and ack["msa_2"] == "C000009" and "larger than the limit" in ack["msa_3"] + ack["err"]
        assert recv_frame(s) is None
    row = InboundMessage.objects.get(status="REJECTED")
    assert len(bytes(row.raw)) == 2048
    assert Order.objects.count() == 1


def test_idle_timeout_and_connection_cap(listener):
    server = listener(idle_timeout=1.0, max_connections=2)
    a = socket.create_connection(("127.0.0.1", server.port))
    b = socket.create_connection(("127.0.0.1", server.port))
    wait_for(lambda: server.stats["connections"] == 2, 10, message="the listener admitted a and b")
    c = socket.create_connection(("127.0.0.1", server.port))
    c.settimeout(5)
    assert c.recv(10) == b""  # refused: closed at once
    assert server.stats["refused"] == 1
    start = time.monotonic()
    a.settimeout(5)
    assert a.recv(10) == b""  # idle: closed after about 1 s
    assert 0.5 < time.monotonic() - start < 4
    for s in (a, b, c):
        s.close()


def test_twenty_concurrent_connections_every_order_once(listener):
    server = listener(max_connections_per_address=20)  # twenty senders, all on 127.0.0.1 here
    per_conn, n_conn = 10, 20
    results: dict[int, list[str]] = {}
    errors = []

    def worker(k: int) -> None:
        try:
            with MLLPClient("127.0.0.1", server.port) as client:
                codes = []
                for j in range(per_conn):
                    i = k * 1000 + j
                    # every order twice (resend after ACK) -- still one order each
                    raw = orm(i)
                    codes.append(ack_fields(unframe(client.send_message(raw)))["msa_1"])
                    if j % 3 == 0:
                        codes.append(ack_fields(unframe(client.send_message(raw)))["msa_1"])
                results[k] = codes
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_conn)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert all(code == "AA" for codes in results.values() for code in codes)
    placers = list(Order.objects.values_list("placer_order_number", flat=True))
    assert len(placers) == n_conn * per_conn == len(set(placers))
    assert RequestedProcedure.objects.values("accession_number").distinct().count() == n_conn * per_conn
    assert InboundMessage.objects.filter(status="APPLIED").count() == n_conn * per_conn


def test_concurrent_first_orders_for_new_patients_create_each_patient_once(listener):
    """Eight connections send, at the same moment, orders for the same five new patients: the
    identifier's lock makes one of them create each patient, the others find it."""
    from ris.models import Patient, PatientIdentifier

    server = listener()
    barrier = threading.Barrier(8)
    codes, errors = [], []

    def worker(k: int) -> None:
        try:
            with MLLPClient("127.0.0.1", server.port) as client:
                barrier.wait(10)
                for j in range(5):
                    raw = orm(k * 100 + j).replace(b"S3000003", f"NEWPAT{j}".encode())
                    codes.append(ack_fields(unframe(client.send_message(raw)))["msa_1"])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and codes == ["AA"] * 40
    for j in range(5):
        ident = PatientIdentifier.objects.get(id_number=f"NEWPAT{j}")
        assert Order.objects.filter(patient_id=ident.patient_id).count() == 8
    assert Patient.objects.count() == 5


def _run_mllp(env_extra: dict) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, **env_extra, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "manage.py", "run_mllp", "--host", "127.0.0.1", "--port", "0"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise AssertionError(f"run_mllp did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, int(line.split(":")[-1].split()[0])


def test_run_mllp_command_answers_ae_when_database_is_down():
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    proc, port = _run_mllp({"DATABASE_URL": f"postgres://postgres@127.0.0.1:{dead_port}/nowhere"})
    try:
        ack = send(port, fixture("epic_orm_o01_nw.hl7"))
        assert ack["msa_1"] == "AE" and ack["msa_2"] == "EPC000101" and "207" in ack["err"]
        assert "database unavailable" in ack["msa_3"]
    finally:
        proc.terminate()
        proc.wait(10)
    assert Order.objects.count() == 0


def test_run_mllp_command_stores_orders(settings):
    url = database_url()
    proc, port = _run_mllp({"DATABASE_URL": url})
    try:
        assert send(port, fixture("cerner_orm_o01_nw_crlf.hl7"))["msa_1"] == "AA"
    finally:
        proc.terminate()
        proc.wait(10)
    rp = RequestedProcedure.objects.get(accession_number="CA200001")
    assert rp.order.patient.patient_name == "Müller^Jürgen"


def test_database_connection_lost_mid_stream_gives_ae_then_recovers(listener):
    """PostgreSQL drops the listener's session (as on a restart or failover): AE, never AA;
    the next message reconnects and is applied."""
    from django.db import connection

    server = listener()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"\x0b" + orm(20) + b"\x1c\r")
        assert ack_fields(recv_frame(s))["msa_1"] == "AA"
        with connection.cursor() as cur:
            cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            assert cur.fetchone()[0] >= 1
        s.sendall(b"\x0b" + orm(21) + b"\x1c\r")
        lost = ack_fields(recv_frame(s))
        assert lost["msa_1"] == "AE" and "207" in lost["err"] and lost["msa_2"] == "C000021"
        s.sendall(b"\x0b" + orm(21) + b"\x1c\r")  # the sender resends
        assert ack_fields(recv_frame(s))["msa_1"] == "AA"
    assert sorted(Order.objects.values_list("placer_order_number", flat=True)) == ["PL000020", "PL000021"]


def test_intake_is_durable_outermost_transaction_with_synchronous_commit(listener):
    """The ingest block is the outermost atomic(durable=True) and the
    listener's sessions run with synchronous_commit=on."""
    from django.db import connection, transaction

    from hl7gateway.intake import handle_payload

    with transaction.atomic(), pytest.raises(RuntimeError, match="durable"):
        handle_payload(orm(30))
    server = listener()
    assert send(server.port, orm(31))["msa_1"] == "AA"
    with connection.cursor() as cur:
        cur.execute("SELECT setting FROM pg_settings WHERE name = 'synchronous_commit'")
        assert cur.fetchone()[0] == "on"
        cur.execute("SHOW fsync")
        assert cur.fetchone()[0] == "on"


def test_run_mllp_with_two_worker_processes_sharing_the_port():
    url = database_url()
    env = {**os.environ, "DATABASE_URL": url, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "manage.py", "run_mllp", "--host", "127.0.0.1", "--port", "0",
                             "--workers", "2"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "workers=2" in line, line
        port = int(line.split(":")[-1].split()[0])
        codes = [send(port, orm(40 + i))["msa_1"] for i in range(8)]  # 8 connections, spread by the kernel
        assert codes == ["AA"] * 8
    finally:
        proc.terminate()
        proc.wait(10)
    assert Order.objects.filter(placer_order_number__startswith="PL0000").count() == 8
    # the children are gone with the parent: the port is free again
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_peer_closing_right_after_sending_still_gets_its_message_stored(listener):
    """The message is processed, the failed ACK write is only logged; a resend
    would be answered from the stored ACK."""
    server = listener()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"\x0b" + orm(50) + b"\x1c\r")
    wait_for(lambda: Order.objects.filter(placer_order_number="PL000050").exists(), 10, message="the order stored")
    assert Order.objects.filter(placer_order_number="PL000050").count() == 1
    assert send(server.port, orm(50))["msa_1"] == "AA"  # the resend: duplicate, stored ACK
    assert Order.objects.count() == 1 and InboundMessage.objects.get().duplicate_count == 1


def test_patient_messages_of_one_connection_in_arrival_order(listener):
    """ADT A04, order, A08, then A40 on one connection: each applied after the previous one."""
    from ris.models import Patient, PatientMerge

    server = listener()
    order_for_old_id = fixture("epic_orm_o01_nw.hl7").replace(
        b"E1000001^^^SYNTHMRN^MR~900-00-0001^^^SSA^SS", b"E1000099^^^SYNTHMRN^MR")
    with MLLPClient("127.0.0.1", server.port) as client:
        codes = [ack_fields(unframe(client.send_message(raw)))["msa_1"] for raw in (
            fixture("cerner_adt_a04.hl7"), fixture("cerner_adt_a08.hl7"), order_for_old_id,
            fixture("epic_adt_a01.hl7"), fixture("epic_adt_a40.hl7"))]
    assert codes == ["AA"] * 5
    assert Patient.objects.get(identifiers__id_number="C2000010").patient_name == "Doe-Smith^Jane^Q"
    merge = PatientMerge.objects.get()
    assert Order.objects.get(placer_order_number="P10001").patient_id == merge.survivor_id
