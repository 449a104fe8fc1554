"""Application start and stop on the audit trail (PS3.15 A.5.3.1 Application Activity): each
process as its operators start it (``manage.py run_mllp``, ``manage.py run_dicom``, ``celery -A
pacs worker``, ``celery -A project beat``, ``gunicorn project.wsgi``), stopped with SIGTERM, the records
read back from the test database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection

from audit.models import AuditRecord
from project.auditing import events
from tests.support.celery_worker import CeleryWorker
from tests.support.net import free_port
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.socket, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _env(tmp_path: Path, **extra) -> dict[str, str]:
    db = connection.settings_dict
    return {**os.environ, "VAR_DIR": str(tmp_path / "var"), "LOG_LEVEL": "WARNING",
            "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            **{k: str(v) for k, v in extra.items()}}


def _activity(process: str) -> list[tuple[str, str]]:
    """(EventTypeCode, action) of the process's Application Activity records, oldest first."""
    return [(r.event_type, r.action) for r in AuditRecord.records.filter(
        event_id=events.APPLICATION_ACTIVITY.value, actor=f"pacs {process}").order_by("id")]


START = (events.APPLICATION_START.value, "E")
STOP = (events.APPLICATION_STOP.value, "E")


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _run_until_sigterm(args: list[str], env: dict, port: int, name: str) -> None:
    """Run the process until it listens and has recorded its start, then SIGTERM it (a listener
    takes its port before it installs its SIGTERM handler: a signal in between ends it unrecorded)."""
    process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        wait_for(lambda: (_listening(port) and _activity(name) == [START]) or process.poll() is not None, 60,
                 message=" ".join(args[:3]))
        assert process.poll() is None, process.stderr.read().decode(errors="replace")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise


def test_record_application_activity_command():
    call_command("record_application_activity", "web", "start", "--pid", "4242")
    [record] = AuditRecord.records.filter(event_id=events.APPLICATION_ACTIVITY.value)
    assert (record.actor, record.actor_kind, record.event_type) == ("pacs web", "system",
                                                                    events.APPLICATION_START.value)
    assert record.detail["pid"] == 4242 and record.detail["host"]


@pytest.mark.parametrize("command", ["run_mllp", "run_dicom"])
def test_listeners_record_their_start_and_stop(command, tmp_path):
    port = free_port()
    env = _env(tmp_path, DICOM_AE_TITLE="PACS", HL7_MLLP_TLS_PORT=0, DICOM_TLS_PORT=0)
    process = {"run_mllp": "mllp", "run_dicom": "dicom"}[command]
    _run_until_sigterm([sys.executable, "manage.py", command, "--host", "127.0.0.1", "--port", str(port),
                        "--workers", "2"], env, port, process)
    assert _activity(process) == [START, STOP]  # once for the command, not per listener process


def test_web_records_its_start_and_stop(tmp_path):
    port = free_port()
    _run_until_sigterm([str(BIN / "gunicorn"), "project.wsgi"], _env(tmp_path, WEB_PORT=port, WEB_WORKERS=1), port,
                       "web")
    assert _activity("web") == [START, STOP]


def test_celery_worker_and_beat_record_their_start_and_stop(tmp_path):
    (tmp_path / "var").mkdir()
    env = _env(tmp_path, CELERY_BROKER_URL=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15"))
    worker = CeleryWorker(tmp_path, env, name="audit-worker", args=["--pool", "prefork", "--concurrency", "1"])
    worker.start()
    assert _activity("worker") == [START]
    worker.stop()
    assert _activity("worker") == [START, STOP], worker.tail()

    beat = subprocess.Popen([str(BIN / "celery"), "-A", "project", "beat", "--loglevel", "INFO",
                             "-s", str(tmp_path / "beat-schedule")], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: _activity("beat") == [START], 60, message="beat's start record")
    finally:
        beat.send_signal(signal.SIGTERM)
        beat.wait(timeout=30)
    assert _activity("beat") == [START, STOP]
