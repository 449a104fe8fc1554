"""The README's promise: with no DATABASE_URL and no CELERY_BROKER_URL the engine runs every
process (Procfile via honcho, as ``make run`` does) on SQLite and a filesystem broker, with a
real Celery worker (not eager mode).  An order sent over MLLP is ACKed AA, the Modality
Worklist returns it to dcmtk's findscu, the web process answers, and the worker runs a task
published through the filesystem broker."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from hl7gateway.mllp import frame
from tests.conftest import dcmtk_tool, free_port

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

ORDER = (
    "MSH|^~\\&|SMOKEEHR|SMOKEHOSP|PACS|RADIOLOGY|20250301081500||ORM^O01|SMOKE0001|P|2.3.1\r"
    "PID|1||SMK0001^^^SMOKEHOSP^MR||Smoketest^Sam||19800101|M\r"
    "PV1|1|O\r"
    "ORC|NW|SMKORD1|||SC||^^^20250302093000^^R\r"
    "OBR|1|SMKORD1||CTHEAD^CT head^LOCAL||||||||||||||SMKACC1||||||CT\r"
)

pytestmark = [pytest.mark.socket, pytest.mark.slow]


def _wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on port {port}")


def _recv_frame(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\x1c\r"):
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the ACK"
        data += chunk
    return data


def test_make_run_defaults_serve_hl7_dicom_web_and_a_real_worker(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL"}}
    mllp, dicom, web = free_port(), free_port(), free_port()
    env.update(
        VAR_DIR=str(tmp_path / "var"), HL7_MLLP_PORT=str(mllp), DICOM_PORT=str(dicom), WEB_PORT=str(web),
        PATH=f"{VENV_BIN}:{env.get('PATH', '')}", TCP_NODELAY="1", PYTHONUNBUFFERED="1",
    )
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True,
                   timeout=300)
    assert (tmp_path / "var" / "pacs.sqlite3").exists()
    honcho = subprocess.Popen([str(VENV_BIN / "honcho"), "start", "-f", "Procfile"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []

    def read_output():
        for raw in iter(honcho.stdout.readline, b""):
            lines.append(raw.decode(errors="replace"))

    reader = threading.Thread(target=read_output, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        for port in (mllp, dicom, web):
            _wait_port(port, deadline)

        with socket.create_connection(("127.0.0.1", mllp), timeout=30) as s:
            s.sendall(frame(ORDER.encode()))
            ack = _recv_frame(s).decode()
        assert "MSA|AA|SMOKE0001" in ack, ack

        out = tmp_path / "find"
        out.mkdir()
        result = subprocess.run(
            [dcmtk_tool("findscu"), "-W", "-aet", "CT1", "-aec", "PACS", "-X", "-od", str(out),
             "-k", "AccessionNumber=SMKACC1", "-k", "PatientName", "-k", "PatientID",
             "127.0.0.1", str(dicom)],
            env={**env, "TCP_NODELAY": "1"}, capture_output=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        responses = list(out.glob("*.dcm"))
        assert len(responses) == 1, (result.stdout[-2000:], result.stderr[-2000:], "".join(lines[-30:]))
        import pydicom

        item = pydicom.dcmread(responses[0])
        assert (item.AccessionNumber, item.PatientID, str(item.PatientName)) == ("SMKACC1", "SMK0001", "Smoketest^Sam")

        # The README's "Connect a modality" query: modality and day inside the step sequence.
        out2 = tmp_path / "find2"
        out2.mkdir()
        result = subprocess.run(
            [dcmtk_tool("findscu"), "-W", "-aet", "CT1", "-aec", "PACS", "-X", "-od", str(out2),
             "-k", "ScheduledProcedureStepSequence[0].Modality=CT",
             "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20250302",
             "-k", "PatientName", "-k", "PatientID", "-k", "AccessionNumber", "-k", "StudyInstanceUID",
             "127.0.0.1", str(dicom)],
            env=env, capture_output=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        (response,) = out2.glob("*.dcm")
        item = pydicom.dcmread(response)
        assert item.AccessionNumber == "SMKACC1" and item.StudyInstanceUID.startswith("2.25.")
        assert item.ScheduledProcedureStepSequence[0].Modality == "CT"

        with urllib.request.urlopen(f"http://127.0.0.1:{web}/health/", timeout=30) as response:
            assert response.status == 200

        subprocess.run([str(VENV_BIN / "celery"), "-A", "pacs", "call", "worklist.expire_idle_claims"],
                       cwd=ROOT, env=env, check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
            "worklist.expire_idle_claims" in line and "succeeded" in line for line in list(lines)
        ):
            time.sleep(0.5)
        assert any("worklist.expire_idle_claims" in line and "succeeded" in line for line in list(lines)), \
            "".join(lines[-40:])
        assert list((tmp_path / "var" / "broker" / "control").iterdir()), "the filesystem broker lives under VAR_DIR"
        assert not (ROOT / "control").exists(), "nothing of the broker is written into the checkout"
    finally:
        os.killpg(honcho.pid, signal.SIGTERM)
        try:
            honcho.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(honcho.pid, signal.SIGKILL)
            honcho.wait(timeout=10)
