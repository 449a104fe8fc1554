"""The DICOM listener under attack: ``manage.py run_dicom`` as a real process, attacked over real
sockets while a declared modality (dcmtk's echoscu, findscu, storescu) is served, and the
listener's memory (VmRSS from /proc) measured during the attack.

The attackers connect from other loopback addresses (127.0.0.2 and up) than the modality
(127.0.0.1), as they would from other hosts: the pending-connection cap is per source address.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification

from pacs.dimse import ul
from pacs.models import DicomNode
from tests.support.dicom import DCMTK_ENV, run_dicom_env, start_run_dicom, stop_process
from tests.support.net import dcmtk_tool, free_port
from tests.support.orthanc import storescu, write_study

MiB = 2**20
# How much the listener's resident memory may grow during an attack.  The attacks below would
# each cost it more than 100 MiB if it buffered what they announce or send.
RSS_GROWTH_BOUND = 48 * MiB
MAX_PDU = 262144  # DICOM_MAX_PDU of the listener


class Listener:
    """A running ``manage.py run_dicom`` and what a test needs of it."""

    def __init__(self, proc: subprocess.Popen, port: int, tmp_path: Path):
        self.proc = proc
        self.port = port
        self.tmp_path = tmp_path

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    # ------------------------------------------------------------- the declared modality
    def echoscu(self) -> subprocess.CompletedProcess:
        return subprocess.run([dcmtk_tool("echoscu"), "-aet", "MOD1", "-aec", "PACS", "-to", "10", "127.0.0.1",
                               str(self.port)], capture_output=True, text=True, env=DCMTK_ENV, timeout=60)

    def findscu(self) -> subprocess.CompletedProcess:
        return subprocess.run([dcmtk_tool("findscu"), "-W", "-aet", "MOD1", "-aec", "PACS", "-to", "10",
                               "-k", "PatientName=*", "127.0.0.1", str(self.port)],
                              capture_output=True, text=True, env=DCMTK_ENV, timeout=60)

    def storescu(self, name: str) -> subprocess.CompletedProcess:
        paths = write_study(self.tmp_path / name, 2, study_instance_uid=generate_uid())
        return storescu(self.port, paths, calling="MOD1")

    def modality_is_served(self, name: str) -> None:
        """C-ECHO, MWL C-FIND and C-STORE of the declared modality MOD1 all succeed."""
        for proc in (self.echoscu(), self.findscu(), self.storescu(name)):
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "Association Rejected" not in proc.stdout + proc.stderr


class RssWatch:
    """The listener's largest VmRSS, sampled every 20 ms on a thread while the block runs."""

    def __init__(self, listener: Listener):
        self.listener = listener
        self.baseline = listener.rss()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.listener.rss())

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.listener.rss())

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


@pytest.fixture
def run_listener(transactional_db, tmp_path):
    """Start ``manage.py run_dicom`` with extra environment; MOD1 is declared at 127.0.0.1 and
    unknown AEs are refused.  Stopped (SIGTERM) after the test."""
    DicomNode.objects.create(ae_title="MOD1", host="127.0.0.1")
    # Declared for the whole loopback range: the attackers come from 127.0.0.2 and up and pass the
    # association policy, so what stops them is the listener's limits.
    DicomNode.objects.create(ae_title="INTRUDER", host="127.0.0.0/8")
    started = []

    def start(**env_extra) -> Listener:
        port = free_port()
        storage = tmp_path / "storage"
        storage.mkdir(exist_ok=True)
        env = run_dicom_env(DICOM_UNKNOWN_AE_FROM="none", STORAGE_DIR=storage, DICOM_MAX_PDU=MAX_PDU, **env_extra)
        proc = start_run_dicom(port, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started.append(proc)
        listener = Listener(proc, port, tmp_path)
        deadline = time.monotonic() + 60
        while listener.echoscu().returncode != 0:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "run_dicom did not answer C-ECHO"
            time.sleep(0.3)
        listener.modality_is_served("warm-up")  # threads, database connections, imports: the baseline
        return listener

    yield start
    for proc in started:
        stop_process(proc)


# ----------------------------------------------------------------------------- attacker helpers
def _connect(listener: Listener, source: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", listener.port), timeout=10, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _closed_by_peer(sock: socket.socket, wait: float = 0.0) -> bool:
    """Has the listener closed (or refused, or aborted) this connection?"""
    sock.settimeout(wait)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
            if data[0] in (ul.A_ASSOCIATE_RJ, ul.A_ABORT):
                return True
    except (TimeoutError, BlockingIOError):
        return False
    except OSError:
        return True


def _rq(calling="INTRUDER") -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = "PACS"
    cx = build_context(Verification, ["1.2.840.10008.1.2"])
    cx.context_id = 1
    primitive.presentation_context_definition_list = [cx]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    primitive.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def _associate(listener: Listener, source: str) -> socket.socket:
    sock = _connect(listener, source)
    sock.sendall(_rq())
    pdu_type, _ = ul.read_pdu(sock, 0)
    assert pdu_type == ul.A_ASSOCIATE_AC
    return sock


def _echo_command(message_id: int, with_data_set: bool = False) -> bytes:
    return ul.encode_command({"AffectedSOPClassUID": Verification, "CommandField": 0x0030, "MessageID": message_id,
                              "CommandDataSetType": 0x0000 if with_data_set else 0x0101})


def _response(sock: socket.socket) -> ul.Command:
    sock.settimeout(60)
    pdu_type, body = ul.read_pdu(sock, 0)
    assert pdu_type == ul.P_DATA_TF, pdu_type
    (_cx, is_command, _last, data), = ul.iter_pdvs(body)
    assert is_command
    return ul.decode_command(bytes(data))


# ----------------------------------------------------------------------------- the attacks
def test_idle_connections_never_block_a_declared_modality(run_listener):
    """112 idle connections (40 from one address, 8 from each of 9 more) against 32 association
    slots: the 33rd used to refuse every modality.  Now they count only as pending connections
    (8 per address, 64 in all, the oldest closed for a newer one) and MOD1 is served while
    they are all open."""
    listener = run_listener(DICOM_ACSE_TIMEOUT=60, DICOM_MAX_ASSOCIATIONS=32)
    idle = []
    try:
        with RssWatch(listener) as rss:
            idle += [_connect(listener, "127.0.0.2") for _ in range(40)]
            for n in range(3, 12):
                idle += [_connect(listener, f"127.0.0.{n}") for _ in range(8)]
            listener.modality_is_served("during-idle")
            deadline = time.monotonic() + 10
            while True:
                still_open = [s for s in idle if not _closed_by_peer(s)]
                if len(still_open) <= 64 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            from_first = [s for s in idle[:40] if s in still_open]
        assert len(still_open) <= 64, "more connections awaiting an A-ASSOCIATE-RQ than DICOM_MAX_PENDING_CONNECTIONS"
        assert len(from_first) <= 8, "more pending connections from one address than DICOM_MAX_PENDING_PER_ADDRESS"
        assert len(still_open) >= 48, "the listener closed connections it had room for"
        listener.modality_is_served("after-idle")
        assert rss.growth < RSS_GROWTH_BOUND, f"listener grew by {rss.growth / MiB:.1f} MiB"
    finally:
        for sock in idle:
            sock.close()


def test_pdu_headers_announcing_huge_lengths_allocate_nothing(run_listener):
    """PDU headers announcing up to 4 GiB, and nothing after them: an A-ASSOCIATE-RQ beyond
    64 KiB and an A-RELEASE-RQ beyond 4 bytes are aborted at once; a P-DATA-TF within the
    negotiated maximum waits for its bytes without the listener allocating what it announced."""
    listener = run_listener(DICOM_ACSE_TIMEOUT=60)
    socks = []
    try:
        with RssWatch(listener) as rss:
            oversized = []
            for n, length in enumerate([64 * MiB - 1] * 4 + [2**32 - 1] * 4):
                sock = _connect(listener, f"127.0.0.{2 + n}")
                sock.sendall(struct.pack(">BxL", ul.A_ASSOCIATE_RQ, length))
                oversized.append(sock)
            at_bound = []
            for _ in range(8):  # an A-ASSOCIATE-RQ header at the 64 KiB bound, then silence
                sock = _connect(listener, "127.0.0.20")
                sock.sendall(struct.pack(">BxL", ul.A_ASSOCIATE_RQ, ul.ASSOCIATE_PDU_MAX))
                at_bound.append(sock)
            data_headers = []
            for n in range(8):  # associated; a P-DATA-TF header at the negotiated maximum, then silence
                sock = _associate(listener, f"127.0.0.{30 + n}")
                sock.sendall(struct.pack(">BxL", ul.P_DATA_TF, MAX_PDU))
                data_headers.append(sock)
            release = _associate(listener, "127.0.0.40")
            release.sendall(struct.pack(">BxL", ul.A_RELEASE_RQ, MiB))
            socks += oversized + at_bound + data_headers + [release]
            refused = [_closed_by_peer(s, wait=5) for s in [*oversized, release]]
            listener.modality_is_served("during-headers")
            waiting = [not _closed_by_peer(s) for s in at_bound + data_headers]
        assert rss.growth < RSS_GROWTH_BOUND, f"listener grew by {rss.growth / MiB:.1f} MiB"
        assert all(refused), "an oversized A-ASSOCIATE-RQ or A-RELEASE-RQ was waited for"
        assert all(waiting), "a PDU within its bound was not waited for"
    finally:
        for sock in socks:
            sock.close()


def test_c_echo_followed_by_150_mib_of_fragments_is_not_held(run_listener):
    """A C-ECHO-RQ that claims a data set, then 150 MiB of data set fragments: read and
    dropped (not held), answered 0x0213 (resource limitation) after its last fragment, and
    the association goes on; MOD1 is served halfway through."""
    listener = run_listener(DICOM_MAX_DATASET_SIZE=MiB)
    chunk = b"\x00" * (MAX_PDU - 6)
    per_half = (75 * MiB) // len(chunk)
    sock = _associate(listener, "127.0.0.2")
    try:
        with RssWatch(listener) as rss:
            sock.sendall(b"".join(ul.p_data_pdus(1, True, _echo_command(1, with_data_set=True), MAX_PDU)))
            pdv = b"".join(ul.p_data_pdus(1, False, chunk, 0))
            pdv_not_last = pdv[:11] + bytes([pdv[11] & ~0x02]) + pdv[12:]
            for _ in range(per_half):
                sock.sendall(pdv_not_last)
            listener.modality_is_served("during-fragments")
            for _ in range(per_half - 1):
                sock.sendall(pdv_not_last)
            sock.sendall(pdv)
            answer = _response(sock)
        assert rss.growth < RSS_GROWTH_BOUND, f"listener grew by {rss.growth / MiB:.1f} MiB"
        assert answer.CommandField == 0x8030 and answer.MessageIDBeingRespondedTo == 1
        assert answer.Status == 0x0213
        sock.sendall(b"".join(ul.p_data_pdus(1, True, _echo_command(2), MAX_PDU)))
        assert _response(sock).Status == 0x0000
    finally:
        sock.close()


def _trickle(sock: socket.socket, data: bytes, interval: float, give_up: float) -> tuple[float, int]:
    """Send ``data`` one byte every ``interval`` seconds until the listener closes or aborts;
    (seconds from the first byte to that, bytes sent)."""
    started = time.monotonic()
    for sent, byte in enumerate(data):
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return time.monotonic() - started, sent
        if _closed_by_peer(sock, wait=interval):
            return time.monotonic() - started, sent + 1
        assert time.monotonic() - started < give_up, "the trickling peer outlived every deadline"
    raise AssertionError("the whole unit was sent")


def test_one_byte_at_a_time_does_not_outlive_the_deadline(run_listener):
    """One byte every second, below the 5 s idle (network) timeout: the A-ASSOCIATE-RQ must be
    whole within the ACSE timeout (2 s) and a DIMSE message within the DIMSE timeout (2 s),
    counted from their first byte; MOD1 is served meanwhile."""
    listener = run_listener(DICOM_ACSE_TIMEOUT=2, DICOM_DIMSE_TIMEOUT=2, DICOM_NETWORK_TIMEOUT=5)
    results = {}

    def attack_association():
        with _connect(listener, "127.0.0.2") as sock:
            results["association"] = _trickle(sock, _rq(), 1.0, give_up=15)

    def attack_message():
        with _associate(listener, "127.0.0.3") as sock:
            message = b"".join(ul.p_data_pdus(1, True, _echo_command(1), MAX_PDU))
            results["message"] = _trickle(sock, message, 1.0, give_up=15)

    threads = [threading.Thread(target=attack_association), threading.Thread(target=attack_message)]
    for thread in threads:
        thread.start()
    try:
        listener.modality_is_served("during-trickle")
    finally:
        for thread in threads:
            thread.join(30)
    for unit in ("association", "message"):
        elapsed, sent = results[unit]
        assert 1.5 <= elapsed < 6, (unit, elapsed)  # the 2 s deadline, not the 5 s idle timeout
        assert sent < 10, (unit, sent)
