"""The export end to end with a real ``celery -A project worker -B`` (the beat schedule of
project.settings, AUDIT_EXPORT_SECONDS short) on the pytest database and Redis, to a real rsyslogd:
records written through the audit trail reach it, sealed and in seq order, with nobody calling the
exporter; the repository goes down (the cursor waits, failing_since is set, nothing is lost) and
comes back: every record arrives exactly once, in order."""

from __future__ import annotations

import os
import time

import pytest
import redis
from django.conf import settings
from django.db import connection

from audit.models import AuditExport, AuditRecord
from tests.support.audit_records import actors, login
from tests.support.celery_worker import CeleryWorker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def wait_until(predicate, what: str, worker: CeleryWorker, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\nworker log:\n{worker.tail()}")


@pytest.fixture
def worker(tmp_path, rsyslog):
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.flushdb()
    db = connection.settings_dict
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL, VAR_DIR=str(tmp_path / "var"), PYTHONUNBUFFERED="1",
        AUDIT_REPOSITORY_URL=f"syslog+tcp://127.0.0.1:{rsyslog.tcp_port}", AUDIT_EXPORT_SECONDS="0.5",
        AUDIT_REPOSITORY_TIMEOUT_SECONDS="2",
    )
    w = CeleryWorker(tmp_path, env, name="b8audit", args=[
        "-B", "--concurrency", "2", "--without-gossip", "--without-mingle", "-s", str(tmp_path / "beat-schedule")])
    w.start()
    yield w
    w.stop()
    broker.flushdb()


def _exported_so_far(worker: CeleryWorker) -> int:
    """The records the worker's own start wrote (Application Start, PS3.15 A.5.3.1), once they
    are at the repository: the test counts its records from there."""
    def settled():
        total = AuditRecord.records.count()
        return total if total and AuditExport.objects.filter(last_seq=total).exists() else 0
    return wait_until(settled, "the worker's own records at the repository", worker)


def test_beat_exports_repository_down_and_back_each_record_once_in_order(worker, rsyslog):
    base = _exported_so_far(worker)
    for n in range(1, 4):
        login(n)
    assert actors(rsyslog.wait_for(base + 3, timeout=30))[base:] == ["test.user1", "test.user2", "test.user3"]
    wait_until(lambda: AuditExport.objects.filter(last_seq=base + 3).exists(), "the cursor at seq 3", worker)

    rsyslog.stop()
    for n in range(4, 7):
        login(n)
    wait_until(lambda: AuditExport.objects.filter(failing_since__isnull=False).exists(),
               "the export to notice the repository is down", worker)
    row = AuditExport.objects.get()
    assert row.last_seq == base + 3 and "Connection refused" in row.last_error
    assert AuditRecord.records.filter(seq__gt=base + 3).count() == 3  # sealed, waiting in the trail

    rsyslog.start()
    login(7)
    rsyslog.wait_for(base + 7, timeout=30)
    wait_until(lambda: AuditExport.objects.filter(last_seq=base + 7, failing_since__isnull=True).exists(),
               "the cursor at seq 7", worker)
    # One more record after the cursor reached seq 7: anything sent twice would arrive before it.
    login(8)
    rsyslog.wait_for(base + 8, timeout=30)
    wait_until(lambda: AuditExport.objects.filter(last_seq=base + 8).exists(), "the cursor at seq 8", worker)
    received = actors(rsyslog.received())
    assert received[base:] == [f"test.user{n}" for n in range(1, 9)]
    assert len(received) == base + 8  # nothing twice, nothing else
