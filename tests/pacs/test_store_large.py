"""C-STORE of a 1 GiB multi-frame instance into the real ``manage.py run_dicom`` process, with
bounded memory: an instance may be larger than the memory a DICOM worker may take, and need not be
held whole, since it arrives in P-DATA-TF PDUs no longer than the maximum length the receiver
negotiated (PS3.8 9.3.5, D.1), so the receiver can write it to disk as it comes.

The instance (Multi-frame Grayscale Word Secondary Capture, PS3.3 A.8.4; explicit VR little
endian) is written to disk without ever being held in memory: pydicom writes the header, then
the Pixel Data element header is appended and its value streamed in 1 MiB chunks.  dcmtk's
``storescu`` sends it to ``run_dicom`` (one worker) started as a subprocess against the test
database; the server streams the dataset to a temporary file (``pacs.dimse.store``), so its
peak resident set (``VmHWM``) stays far below the instance size.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import sop_class as sc
from pynetdicom.dsutils import create_file_meta

from pacs.models import Instance
from tests.support.dicom import DCMTK_ENV
from tests.support.net import dcmtk_tool, free_port
from tests.support.orthanc import storescu

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.socket]

ROOT = Path(__file__).resolve().parents[2]
ROWS = COLUMNS = 512
FRAMES = 2048  # 2048 frames x 512 x 512 x 2 bytes = 1 GiB of Pixel Data
FRAME_BYTES = ROWS * COLUMNS * 2
PIXEL_BYTES = FRAMES * FRAME_BYTES
CHUNK = 1024 * 1024
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"

# Peak RSS of the run_dicom process that received the 1 GiB instance, measured here
# (pynetdicom 3.0.4, Django 5.2, Python 3.11, 2026-11-26): 87 MiB, against 86 MiB after a
# C-ECHO alone; the instance adds nothing proportional to its size.  The same run with
# pynetdicom's in-memory receive path (STORE_RECV_CHUNKED_DATASET False) peaked at 1108 MiB.
# 200 MiB leaves more than 2x margin over the measured figure and stays far below that.
PEAK_RSS_BOUND = 200 * 1024 * 1024


def write_large_instance(path: Path, *, study_instance_uid: str) -> tuple[str, str]:
    """Write the instance without holding its Pixel Data in memory; returns (SOP Instance UID,
    SHA-256 of the Pixel Data value).  The File Meta Information is the one pynetdicom's
    receiver writes (``create_file_meta``), so sender and stored file have equal sizes when the
    data set arrived whole."""
    sop_instance_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = create_file_meta(sop_class_uid=sc.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
                                    sop_instance_uid=sop_instance_uid, transfer_syntax=ExplicitVRLittleEndian)
    ds.SOPClassUID = sc.MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = study_instance_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "TEST^LARGE"
    ds.PatientID = "PATLARGE"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.AccessionNumber = "ACC-LARGE"
    ds.StudyDate = "20260101"
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = FRAMES
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = 40.0
    ds.Rows = ROWS
    ds.Columns = COLUMNS
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.save_as(path, enforce_file_format=True)

    digest = hashlib.sha256()
    pattern = bytearray(random.Random(4).randbytes(CHUNK))
    with open(path, "ab") as fh:
        fh.write(PIXEL_DATA_TAG + b"OW\x00\x00" + struct.pack("<I", PIXEL_BYTES))
        for index in range(PIXEL_BYTES // CHUNK):
            pattern[:8] = struct.pack("<Q", index)  # each chunk differs: a lost or repeated chunk shows
            fh.write(pattern)
            digest.update(pattern)
    return sop_instance_uid, digest.hexdigest()


def pixel_data_digest(path: Path) -> str:
    """SHA-256 of the Pixel Data value, read in chunks (the header through pydicom)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        dcmread(fh, stop_before_pixels=True)
        header = fh.read(12)
        assert header[:4] == PIXEL_DATA_TAG and header[4:8] == b"OW\x00\x00", header
        remaining = struct.unpack("<I", header[8:])[0]
        assert remaining == PIXEL_BYTES
        while remaining:
            block = fh.read(min(CHUNK, remaining))
            assert block, "Pixel Data truncated"
            digest.update(block)
            remaining -= len(block)
        assert fh.read(1) == b""  # nothing after the Pixel Data
    return digest.hexdigest()


def peak_rss(pid: int) -> int:
    """VmHWM (peak resident set size) of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _echo(port: int) -> int:
    return subprocess.run([dcmtk_tool("echoscu"), "-aet", "MOD1", "-aec", "PACS", "-to", "5", "127.0.0.1", str(port)],
                          capture_output=True, env=DCMTK_ENV, timeout=30).returncode


@pytest.fixture
def workdir(tmp_path):
    """Source file, store and the server's temporary files; removed at once (2+ GiB on disk)."""
    path = tmp_path / "large"
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _data_set_offset(path) -> int:
    """Where the data set starts: preamble, DICM, then (0002,0000) UL group length."""
    with open(path, "rb") as fh:
        head = fh.read(144)
    return 144 + int.from_bytes(head[140:144], "little")


def test_one_gib_multiframe_is_stored_with_bounded_memory(workdir, transactional_db):
    study_uid = generate_uid()
    source = workdir / "large.dcm"
    sop_instance_uid, source_digest = write_large_instance(source, study_instance_uid=study_uid)
    assert source.stat().st_size > PIXEL_BYTES

    store = workdir / "storage"
    store.mkdir()
    server_tmp = workdir / "tmp"  # pynetdicom's chunked temporary files; same file system as the store
    server_tmp.mkdir()
    port = free_port()
    db = connection.settings_dict
    env = {**os.environ, "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
           "DICOM_AE_TITLE": "PACS", "LOG_LEVEL": "WARNING", "STORAGE_DIR": str(store), "TMPDIR": str(server_tmp)}
    with open(workdir / "run_dicom.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "manage.py", "run_dicom", "--host", "127.0.0.1", "--port", str(port),
                                 "--workers", "1"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while _echo(port) != 0:
            assert proc.poll() is None, (workdir / "run_dicom.log").read_text()
            assert time.monotonic() < deadline, "run_dicom did not answer C-ECHO"
            time.sleep(0.3)
        idle_rss = peak_rss(proc.pid)

        started = time.monotonic()
        sent = storescu(port, [source], extra=("-xe",))  # explicit VR little endian, as stored
        elapsed = time.monotonic() - started
        assert sent.returncode == 0, sent.stderr
        assert "Received Store Response (Success)" in sent.stdout + sent.stderr, sent.stdout + sent.stderr
        server_peak = peak_rss(proc.pid)  # one worker: no forked children to add
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print(f"1 GiB C-STORE: {elapsed:.1f} s, run_dicom VmHWM {server_peak / 2**20:.0f} MiB "
          f"(after C-ECHO {idle_rss / 2**20:.0f} MiB)")
    assert server_peak < PEAK_RSS_BOUND, f"run_dicom peak RSS {server_peak / 2**20:.0f} MiB"

    instance = Instance.objects.get(sop_instance_uid=sop_instance_uid)
    assert instance.study.study_instance_uid == study_uid
    assert instance.transfer_syntax_uid == ExplicitVRLittleEndian
    stored = store / instance.path
    assert instance.size == stored.stat().st_size
    # the data set is the one sent, byte for byte in length; the File Meta Information is ours
    assert stored.stat().st_size - _data_set_offset(stored) == source.stat().st_size - _data_set_offset(source)
    with open(stored, "rb") as fh:
        head = fh.read(132)
    assert head[:128] == b"\x00" * 128 and head[128:] == b"DICM"
    assert pixel_data_digest(stored) == pixel_data_digest(source) == source_digest
    assert not [p for p in (store / ".incoming").iterdir()]
    assert not [p for p in server_tmp.iterdir()]  # pynetdicom's temporary file is gone too
