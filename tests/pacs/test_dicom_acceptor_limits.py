"""The acceptor's bounds, one by one, on real sockets (the attacks on a whole ``run_dicom`` are in
test_dicom_listener_limits): reads under one deadline, buffers that grow only with what has
arrived, pending connections refused per address and closed oldest first, data sets beyond
their bound, handler exceptions, PDVs after the end of a message, the Implementation Class UID."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
import tracemalloc

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification

from pacs.dimse import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, ul
from tests.support.dicom import echoscu, port_of
from tests.support.dicom_ul import answer, associate, associate_rq, connect, echo_rq, response

MWL = ((ModalityWorklistInformationFind, "1.2.840.10008.1.2"),)


def _find_rq(identifier: bytes, message_id=1, context_id=1) -> bytes:
    command = ul.encode_command({"AffectedSOPClassUID": ModalityWorklistInformationFind, "CommandField": 0x0020,
                                 "MessageID": message_id, "Priority": 0, "CommandDataSetType": 0x0000})
    return b"".join(ul.message_pdus(context_id, command, identifier, 16384))


def _identifier(**keys) -> bytes:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    out = DicomBytesIO()
    out.is_implicit_VR, out.is_little_endian = True, True
    write_dataset(out, ds)
    return out.getvalue()


def _final_find_response(sock) -> ul.Command:
    while True:
        pdu_type, body = ul.read_pdu(sock, 0)
        assert pdu_type == ul.P_DATA_TF
        pdvs = list(ul.iter_pdvs(body))
        if pdvs[0][1] and pdvs[0][2]:
            command = ul.decode_command(bytes(pdvs[0][3]))
            if command.Status not in (0xFF00, 0xFF01):
                return command


def _wait_for(condition, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@pytest.fixture
def limited_server(transactional_db, settings):
    """The AE with small limits, set per test through ``settings`` before it starts."""
    from pacs.dimse.server import start_server

    servers = []

    def start(**overrides):
        settings.DICOM_AE_TITLE = "PACS"
        for name, value in overrides.items():
            setattr(settings, name, value)
        server = start_server("127.0.0.1", 0)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()


# ----------------------------------------------------------------------------- ul: reads
def test_a_header_announcing_a_length_allocates_only_what_arrives():
    """An A-ASSOCIATE-RQ header at its 64 KiB bound, then 100 bytes and a close: the read
    allocates about what arrived, not what was announced."""
    left, right = socket.socketpair()
    try:
        left.sendall(struct.pack(">BxL", ul.A_ASSOCIATE_RQ, ul.ASSOCIATE_PDU_MAX) + b"x" * 100)
        left.close()
        tracemalloc.start()
        try:
            with pytest.raises(ul.ConnectionClosed):
                ul.read_pdu(right, 0, ul.Deadline(5))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 32 * 1024, peak
    finally:
        right.close()


@pytest.mark.parametrize("length", [1, 16384, 16385, 262150, 3 * 2**20 + 7])
def test_a_growing_read_returns_exactly_what_was_sent(length):
    body = bytes(i * 7 % 251 for i in range(length))
    left, right = socket.socketpair()
    with left, right:
        sender = threading.Thread(target=left.sendall, args=(ul.pdu(ul.P_DATA_TF, body),))
        sender.start()
        assert ul.read_pdu(right, 0, ul.Deadline(30)) == (ul.P_DATA_TF, body)
        sender.join()


def test_an_association_buffer_reads_each_pdu_exactly_and_is_then_reused():
    """P-DATA-TF bodies of changing lengths through one ReadBuffer: each read returns exactly
    its PDU; once the buffer has grown to the largest, a further PDU allocates nothing."""
    lengths = [262150, 100, 262150, 300001, 7, 262150]
    bodies = [bytes((i * 31 + k) % 251 for k in range(n)) for i, n in enumerate(lengths)]
    reuse = ul.ReadBuffer()
    left, right = socket.socketpair()
    with left, right:
        sender = threading.Thread(target=left.sendall, args=(b"".join(ul.pdu(ul.P_DATA_TF, b) for b in bodies),))
        sender.start()
        for body in bodies[:-1]:
            assert ul.read_pdu(right, 0, ul.Deadline(30), reuse=reuse) == (ul.P_DATA_TF, body)
        assert len(reuse.data) >= max(lengths)
        tracemalloc.start()
        try:
            pdu_type, last = ul.read_pdu(right, 0, ul.Deadline(30), reuse=reuse)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert (pdu_type, bytes(last)) == (ul.P_DATA_TF, bodies[-1])
        assert peak < 32 * 1024, peak
        sender.join()


def test_a_header_on_a_reused_buffer_allocates_nothing_more():
    """An association's buffer, grown by an earlier PDU, holds a header announcing its whole
    size that is followed by 100 bytes and a close: nothing beyond the buffer is allocated."""
    reuse = ul.ReadBuffer()
    left, right = socket.socketpair()
    with right:
        sender = threading.Thread(target=left.sendall, args=(ul.pdu(ul.P_DATA_TF, b"x" * 262150),))
        sender.start()
        ul.read_pdu(right, 262144, ul.Deadline(5), reuse=reuse)
        sender.join()
        left.sendall(struct.pack(">BxL", ul.P_DATA_TF, 262150) + b"y" * 100)
        left.close()
        tracemalloc.start()
        try:
            with pytest.raises(ul.ConnectionClosed):
                ul.read_pdu(right, 262144, ul.Deadline(5), reuse=reuse)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 32 * 1024, peak


@pytest.mark.parametrize(("pdu_type", "length"), [
    (ul.A_ASSOCIATE_RQ, ul.ASSOCIATE_PDU_MAX + 1),
    (ul.A_RELEASE_RQ, 5),
    (ul.A_ABORT, 2**32 - 1),
    (ul.P_DATA_TF, 16384 + 7),
])
def test_a_pdu_beyond_its_bound_is_refused_on_its_header(pdu_type, length):
    left, right = socket.socketpair()
    with left, right:
        left.sendall(struct.pack(">BxL", pdu_type, length))  # and nothing more: no body is waited for
        right.settimeout(5)
        with pytest.raises(ul.ProtocolError):
            ul.read_pdu(right, 16384)


def test_a_pdu_trickled_byte_by_byte_ends_at_its_deadline():
    """One byte every 0.2 s: each recv would be answered in time, the whole PDU is not."""
    left, right = socket.socketpair()
    stop = threading.Event()

    def trickle():
        for byte in ul.pdu(ul.A_RELEASE_RQ, b"\x00\x00\x00\x00") * 10:
            if stop.wait(0.2):
                return
            try:
                left.send(bytes([byte]))
            except OSError:
                return

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            ul.read_pdu(right, 0, ul.Deadline(0.7))
        assert 0.6 < time.monotonic() - started < 3
    finally:
        stop.set()
        sender.join()
        left.close()
        right.close()


def test_the_minimum_rate_extends_a_deadline_by_what_arrived():
    deadline = ul.Deadline(1, min_rate=1000)
    before = deadline.at
    deadline.received(500)
    assert deadline.at == pytest.approx(before + 0.5)
    no_rate = ul.Deadline(1)
    no_rate.received(10**9)
    assert no_rate.remaining() <= 1


# ----------------------------------------------------------------------------- pending connections
@contextlib.contextmanager
def _idle(server, count: int):
    """``count`` connections that send nothing, closed at the end."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(connect(server)) for _ in range(count)]


def _assert_waited_for(server, socks) -> None:
    """The listener has neither answered nor closed these connections: it counts them as pending
    (its own state, under its lock), and each has nothing to read right now (a non-blocking
    read: no time allowed for an answer to arrive)."""
    _wait_for(lambda: server.pending_count() == len(socks))
    for sock in socks:
        sock.setblocking(False)
        try:
            with pytest.raises(BlockingIOError):
                sock.recv(1)
        finally:
            sock.settimeout(10)


def _assert_associates(server) -> None:
    with connect(server) as sock:
        sock.sendall(associate_rq())
        assert ul.read_pdu(sock, 0)[0] == ul.A_ASSOCIATE_AC


def test_connections_beyond_the_per_address_cap_are_refused_transient(limited_server):
    server = limited_server(DICOM_MAX_PENDING_PER_ADDRESS=2, DICOM_MAX_PENDING_CONNECTIONS=10)
    with _idle(server, 2) as idle:
        with connect(server) as third:
            pdu_type, body = ul.read_pdu(third, 0)
            rj = A_ASSOCIATE_RJ()
            rj.decode(ul.pdu(pdu_type, body))
            assert (rj.result, rj.source, rj.reason_diagnostic) == (0x02, 0x03, 0x02)  # transient, local limit
        _assert_waited_for(server, idle)  # the two first wait for their request, untouched
        idle[0].close()
        _wait_for(lambda: server.pending_count() <= 1)
        _assert_associates(server)  # room again for this address


def test_the_oldest_pending_connection_makes_room_for_a_new_one(limited_server):
    server = limited_server(DICOM_MAX_PENDING_PER_ADDRESS=10, DICOM_MAX_PENDING_CONNECTIONS=3)
    with _idle(server, 3) as idle:
        _wait_for(lambda: server.pending_count() == 3)
        _assert_associates(server)
        idle[0].settimeout(5)
        assert idle[0].recv(1) == b""  # the oldest was closed for it
        _assert_waited_for(server, idle[1:])


def test_pending_connections_do_not_take_association_slots(limited_server):
    server = limited_server(DICOM_MAX_ASSOCIATIONS=2, DICOM_MAX_PENDING_PER_ADDRESS=8)
    with _idle(server, 5), associate(server) as first, associate(server) as second:
        assert server.association_count() == 2
        with connect(server) as third:
            third.sendall(associate_rq())
            pdu_type, body = ul.read_pdu(third, 0)
            assert pdu_type == ul.A_ASSOCIATE_RJ and tuple(body[1:4]) == (0x02, 0x03, 0x02)
        for sock in (first, second):
            sock.sendall(echo_rq())
            assert response(sock).Status == 0x0000


def test_no_a_associate_rq_within_the_acse_timeout_closes_the_connection(limited_server):
    server = limited_server(DICOM_ACSE_TIMEOUT=1.0)
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(associate_rq()[:10])
        assert answer(sock)[0] == 0  # closed (PS3.8 AA-2), nothing sent
        assert 0.8 < time.monotonic() - started < 5
    assert echoscu(server).returncode == 0


def test_bytes_trickling_after_the_release_do_not_keep_the_connection(limited_server):
    """After A-RELEASE-RP the acceptor waits for the peer to close (PS3.8 Sta13) for at most the
    ACSE timeout in all, however the peer keeps sending."""
    server = limited_server(DICOM_ACSE_TIMEOUT=1.0)
    with associate(server) as sock:
        sock.sendall(ul.pdu(ul.A_RELEASE_RQ, b"\x00" * 4))
        assert answer(sock)[0] == ul.A_RELEASE_RP
        started = time.monotonic()
        sock.settimeout(0.3)
        while True:
            try:
                sock.sendall(b"x")
                if sock.recv(1) == b"":
                    break
            except TimeoutError:
                pass
            except OSError:
                break
            assert time.monotonic() - started < 5, "a trickle kept the released connection open"
        assert 0.8 < time.monotonic() - started < 5
    _wait_for(lambda: server.active_count() == 0)


# ----------------------------------------------------------------------------- messages
def test_a_data_set_beyond_the_bound_is_refused_with_a_failure_status(limited_server):
    """A C-FIND identifier beyond DICOM_MAX_DATASET_SIZE: read to its end, answered 0xA700 (out
    of resources); one within it is served on the same association."""
    server = limited_server(DICOM_MAX_DATASET_SIZE=4096)
    with associate(server, contexts=MWL) as sock:
        sock.sendall(_find_rq(_identifier(PatientComments="X" * 6000, PatientID=""), message_id=1))
        answer = _final_find_response(sock)
        assert answer.MessageIDBeingRespondedTo == 1 and answer.Status == 0xA700
        sock.sendall(_find_rq(_identifier(PatientName="NOBODY*", PatientID=""), message_id=2))
        answer = _final_find_response(sock)
        assert answer.MessageIDBeingRespondedTo == 2 and answer.Status == 0x0000


def test_a_command_set_beyond_its_bound_aborts(dicom_server):
    with associate(dicom_server) as sock:
        fragment = ul.pdu(ul.P_DATA_TF, struct.pack(">LBB", 16002, 1, 0x01) + b"\x00" * 16000)  # command, not last
        try:
            for _ in range(5):
                sock.sendall(fragment)
        except OSError:
            pass
        pdu_type, body = answer(sock)
        assert pdu_type == ul.A_ABORT and body[2] == ul.ABORT_SOURCE_PROVIDER


def test_a_pdv_after_the_end_of_a_message_aborts(dicom_server):
    """A C-ECHO-RQ that is complete, followed in the same P-DATA-TF by another PDV: a protocol
    error (A-ABORT), not a PDV silently dropped."""
    command = ul.encode_command({"AffectedSOPClassUID": Verification, "CommandField": 0x0030,
                                 "MessageID": 1, "CommandDataSetType": 0x0101})
    body = struct.pack(">LBB", len(command) + 2, 1, 0x03) + command + struct.pack(">LBB", 6, 1, 0x02) + b"\x00" * 4
    with associate(dicom_server) as sock:
        sock.sendall(ul.pdu(ul.P_DATA_TF, body))
        pdu_type, body = answer(sock)
        assert pdu_type == ul.A_ABORT and body[3] == ul.REASON_UNEXPECTED_PDU
    assert echoscu(dicom_server).returncode == 0


def test_an_exception_in_a_handler_is_its_failure_status(dicom_server):
    """C-ECHO whose handler raises: 0x0110 (processing failure); a C-FIND whose generator
    raises after one match: the match, then 0xC000; the association goes on either way, and
    the failures are counted for the calling AE as the statuses answered."""
    from monitoring.models import DicomOperation
    from pacs.dimse import db
    from pacs.dimse.counting import counted

    def failing_echo(event):
        raise RuntimeError("handler bug")

    def failing_find(event):
        yield 0xFF00, Dataset()
        raise RuntimeError("handler bug")

    dicom_server.handlers["C-ECHO"] = counted("C-ECHO", failing_echo)
    dicom_server.handlers["C-FIND"] = counted("C-FIND", failing_find)
    with associate(dicom_server, contexts=(*MWL, (Verification, "1.2.840.10008.1.2"))) as sock:
        sock.sendall(echo_rq(message_id=1, context_id=3))
        assert response(sock).Status == 0x0110
        sock.sendall(_find_rq(_identifier(PatientName="*"), message_id=2))
        assert _final_find_response(sock).Status == 0xC000
        sock.sendall(echo_rq(message_id=3, context_id=3))
        assert response(sock).Status == 0x0110  # still associated: answered, not aborted
    db.flush()
    counts = {(r.operation, r.status): r.count for r in DicomOperation.objects.filter(calling_ae_title="MOD1")}
    assert counts == {("C-ECHO", 0x0110): 2, ("C-FIND", 0xC000): 1}


def test_received_files_name_the_engine_as_their_implementation(engine, store_dir, tmp_path):
    """(0002,0012)/(0002,0013) of a stored file: the engine wrote its File Meta Information
    (PS3.10 7.1), whatever the sender's were."""
    from pydicom import dcmread

    from pacs.models import Instance
    from tests.support.orthanc import storescu, write_study

    paths = write_study(tmp_path / "in", 1, study_instance_uid=generate_uid())
    assert storescu(port_of(engine), paths).returncode == 0
    meta = dcmread(store_dir / Instance.objects.get().path).file_meta
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME


def test_the_engine_announces_its_own_implementation_class_uid(dicom_server):
    ae = AE(ae_title="MOD1")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port_of(dicom_server), ae_title="PACS")
    try:
        assert assoc.is_established
        assert assoc.acceptor.implementation_class_uid == IMPLEMENTATION_CLASS_UID
        assert assoc.acceptor.implementation_version_name == IMPLEMENTATION_VERSION_NAME
    finally:
        assoc.release()
    assert IMPLEMENTATION_CLASS_UID.startswith("2.25.") and len(IMPLEMENTATION_CLASS_UID) <= 64
    assert 1 <= len(IMPLEMENTATION_VERSION_NAME) <= 16
