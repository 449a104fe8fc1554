"""Health per process type against real listeners: the web /health/ (database and broker),
``manage.py health mllp|dicom|worker`` as a container healthcheck runs it (a subprocess; exit
code 0 healthy, 1 not), and nothing in the answers but check names and ok/failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis
from django.db import connection

from hl7gateway.server import MLLPServer
from monitoring.models import DicomOperation
from pacs.dimse import db
from tests.support.celery_worker import routing_worker as Worker
from tests.support.dicom import port
from tests.support.net import free_port

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]
BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")


def env(**extra) -> dict:
    db = connection.settings_dict
    return {**os.environ, "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            "CELERY_BROKER_URL": BROKER, **extra}


def health(*args, **extra) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "manage.py", "health", *args, "--timeout", "2"], cwd=ROOT,
                          env=env(**extra), capture_output=True, text=True, timeout=60)
    line = [x for x in proc.stdout.splitlines() if x.startswith("{")][-1]
    return proc.returncode, json.loads(line)


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_web_health_says_database_and_broker_answer(live_server, settings):
    assert get(f"{live_server.url}/health/") == (200, {"status": "ok", "checks": {"database": True, "broker": True}})
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    status, body = get(f"{live_server.url}/health/")
    assert status == 503 and body == {"status": "failed", "checks": {"database": True, "broker": False}}


def test_web_health_command_probes_the_live_server(live_server):
    code, body = health("web", "--port", live_server.url.rsplit(":", 1)[1])
    assert code == 0 and body == {"process": "web", "status": "ok", "checks": {"database": True, "listener": True}}


def test_mllp_health_connects_to_the_listener():
    server = MLLPServer("127.0.0.1", 0).start()
    try:
        code, body = health("mllp", "--host", "127.0.0.1", "--port", str(server.port))
        assert code == 0 and body["checks"] == {"database": True, "listener": True}
    finally:
        server.stop()
    code, body = health("mllp", "--host", "127.0.0.1", "--port", str(server.port))
    assert code == 1 and body["status"] == "failed" and body["checks"]["listener"] is False


def test_dicom_health_echoes_the_engine(engine):  # noqa: F811 - pytest fixture
    code, body = health("dicom", "--host", "127.0.0.1", "--port", str(port(engine)), DICOM_AE_TITLE="PACS")
    assert code == 0 and body["checks"] == {"database": True, "listener": True}
    db.flush()  # what was counted is written
    assert not DicomOperation.objects.filter(calling_ae_title="HEALTHCHECK").exists()  # not an interface
    code, body = health("dicom", "--host", "127.0.0.1", "--port", str(free_port()))
    assert code == 1 and body["checks"]["listener"] is False


def test_database_down_is_unhealthy():
    code, body = health("mllp", "--port", str(free_port()), DATABASE_URL=f"postgres://postgres@127.0.0.1:{free_port()}/x")
    assert code == 1 and body["checks"]["database"] is False


def test_worker_health_pings_a_real_worker(tmp_path):
    redis.Redis.from_url(BROKER).flushdb()
    code, body = health("worker")
    assert code == 1 and body["checks"] == {"database": True, "broker": True, "worker": False}
    worker = Worker(tmp_path, {**env(), "TCP_NODELAY": "1"})
    worker.start()
    try:
        code, body = health("worker")
        assert code == 0 and body["checks"] == {"database": True, "broker": True, "worker": True}
    finally:
        worker.stop()
        redis.Redis.from_url(BROKER).flushdb()
