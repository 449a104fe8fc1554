"""A real Celery worker for the ORU delivery tests: ``celery -A project worker`` with embedded beat
(the sweep) on the pytest database and this run's Redis DB, with short retry and sweep timings."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connection

from tests.celery_worker import CeleryWorker

ROOT = Path(__file__).resolve().parents[2]
WORKER_ENV = {
    "HL7_ORU_RETRY_BASE_SECONDS": "0.3",
    "HL7_ORU_RETRY_MAX_SECONDS": "1.5",
    "HL7_ORU_SWEEP_SECONDS": "1",
    "HL7_ORU_REQUEUE_AFTER_SECONDS": "2",
    "HL7_ORU_CONNECT_TIMEOUT_SECONDS": "1",
    "HL7_ORU_ACK_TIMEOUT_SECONDS": "3",
    "HL7_ORU_MAX_ATTEMPTS": "4",
}


def Worker(tmp: Path, name: str) -> CeleryWorker:
    """A real ``celery -A project worker`` with embedded beat (the sweep), on the test database."""
    db = connection.settings_dict
    env = dict(os.environ)
    env.update(WORKER_ENV)
    env.update(
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        VAR_DIR=str(tmp / "var"),
        PYTHONUNBUFFERED="1",
    )
    return CeleryWorker(tmp, env, name=name, args=["-B", "--concurrency", "2", "--without-gossip", "--without-mingle",
                                                   "-s", str(tmp / f"{name}-beat-schedule")])


@pytest.fixture
def broker():
    """Redis DB of this test run, emptied so no task of an earlier run is picked up."""
    r = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    r.flushdb()
    yield r
    r.flushdb()


def wait_until(predicate, timeout: float, what: str, worker: CeleryWorker | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f"\nworker log:\n{worker.tail()}" if worker else ""))
