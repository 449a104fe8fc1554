"""audit.chain and the append-only guards: seal, verify, purge, tampering, concurrency."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, connections, transaction

from audit import chain, tasks, trail
from audit.models import AppendOnlyError, AuditPatient, AuditRecord
from project.auditing import events

ROOT = Path(__file__).resolve().parents[2]


def _add(n, *, at=None, **detail):
    return trail.record(events.PATIENT_RECORD, action=events.READ, actor=f"user{n}", actor_kind=events.USER,
                        patients=[(f"PAT-{n}", "HOSP")], detail={"n": n, **detail}, occurred_at=at)


def _seal_all():
    total = 0
    while (sealed := chain.seal(limit=7)) > 0:
        total += sealed
    return total


def _verify_command():
    try:
        call_command("verify_audit", stdout=(out := __import__("io").StringIO()))
    except CommandError as exc:
        return exc.returncode, out.getvalue()
    return 0, out.getvalue()


def test_seal_chains_records_in_id_order_and_verify_passes(db):
    records = [_add(n) for n in range(20)]
    assert _seal_all() == 20
    rows = list(AuditRecord.records.order_by("seq").values("id", "seq", "prev_hash", "record_hash"))
    assert [r["id"] for r in rows] == [r.pk for r in records]
    assert [r["seq"] for r in rows] == list(range(1, 21))
    assert rows[0]["prev_hash"] == chain.GENESIS
    assert all(b["prev_hash"] == a["record_hash"] for a, b in zip(rows, rows[1:], strict=False))
    assert chain.seal() == 0
    result = chain.verify()
    assert result.checked == 20 and result.ok
    assert _verify_command() == (0, "20 records checked, 0 breaks\n")


def test_the_model_refuses_update_and_delete(db):
    rec = _add(1)
    rec.actor = "mallory"
    with pytest.raises(AppendOnlyError):
        rec.save()
    with pytest.raises(AppendOnlyError):
        rec.delete()
    with pytest.raises(AppendOnlyError):
        AuditRecord.records.filter(pk=rec.pk).update(actor="mallory")
    with pytest.raises(AppendOnlyError):
        AuditRecord.records.filter(pk=rec.pk).delete()
    with pytest.raises(AppendOnlyError):
        AuditPatient.objects.filter(record=rec).delete()
    with pytest.raises(AppendOnlyError):
        AuditPatient.objects.filter(record=rec).update(patient_id="PAT-X")
    assert AuditRecord.records.get(pk=rec.pk).actor == "user1"


@pytest.mark.parametrize("statement", [
    "UPDATE audit_auditrecord SET actor = 'mallory' WHERE id = %s",
    "UPDATE audit_auditrecord SET detail = '{}' WHERE id = %s",
    "DELETE FROM audit_auditrecord WHERE id = %s",
    "UPDATE audit_auditpatient SET patient_id = 'PAT-X' WHERE record_id = %s",
    "DELETE FROM audit_auditpatient WHERE record_id = %s",
    # Sealing with a forged content change, and sealing a sealed row again:
    "UPDATE audit_auditrecord SET seq = 99, prev_hash = repeat('0', 64), record_hash = repeat('a', 64), "
    "actor = 'mallory' WHERE id = %s",
    "UPDATE audit_auditrecord SET seq = 99, prev_hash = repeat('0', 64), record_hash = repeat('a', 64) WHERE id = %s",
])
def test_the_database_refuses_update_and_delete(db, statement):
    rec = _add(1)
    chain.seal()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cur:
        cur.execute(statement, [rec.pk])
    assert AuditRecord.records.filter(pk=rec.pk, actor="user1", seq=1).exists()
    assert AuditPatient.objects.filter(record=rec, patient_id="PAT-1").exists()


def test_tampering_behind_the_triggers_is_found_by_verify_audit(transactional_db):
    for n in range(5):
        _add(n)
    _seal_all()
    victim = AuditRecord.records.get(seq=3)
    with connection.cursor() as cur:  # a superuser who disables the guard
        cur.execute("ALTER TABLE audit_auditrecord DISABLE TRIGGER audit_record_guard")
        cur.execute("UPDATE audit_auditrecord SET actor = 'somebody else' WHERE id = %s", [victim.pk])
        cur.execute("ALTER TABLE audit_auditrecord ENABLE TRIGGER audit_record_guard")
    result = chain.verify()
    assert [(b.kind, b.seq) for b in result.breaks] == [("hash", 3)]
    # The command as an operator runs it: exit status 1, the break named.
    env = {**os.environ, "DATABASE_URL": _database_url()}
    run = subprocess.run([sys.executable, "manage.py", "verify_audit"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert "5 records checked, 1 breaks" in run.stdout
    assert f"hash: record {victim.pk} (seq 3)" in run.stdout


def test_a_deleted_record_and_a_relinked_chain_are_found(db):
    for n in range(6):
        _add(n)
    _seal_all()
    gone, relinked = AuditRecord.records.get(seq=2), AuditRecord.records.get(seq=5)
    with connection.cursor() as cur:
        # A superuser's other way around the guards: no ordinary trigger fires for a replica.
        cur.execute("SET LOCAL session_replication_role = replica")
        cur.execute("DELETE FROM audit_auditpatient WHERE record_id = %s", [gone.pk])
        cur.execute("DELETE FROM audit_auditrecord WHERE id = %s", [gone.pk])
        cur.execute("UPDATE audit_auditrecord SET prev_hash = %s WHERE id = %s", ["f" * 64, relinked.pk])
        cur.execute("SET LOCAL session_replication_role = origin")
    kinds = [(b.kind, b.seq) for b in chain.verify().breaks]
    assert ("gap", 3) in kinds and ("link", 3) in kinds  # seq 2 missing: seq 3 links to nothing there
    assert ("link", 5) in kinds and ("hash", 5) in kinds
    code, out = _verify_command()
    assert code == 1 and "gap: record" in out


def test_an_old_unsealed_record_is_reported(db):
    _add(1, at=datetime.now(UTC) - timedelta(hours=1))
    result = chain.verify(unsealed_after=timedelta(minutes=10))
    assert [b.kind for b in result.breaks] == ["unsealed"]
    assert chain.verify(unsealed_after=timedelta(hours=2)).ok


def test_purge_deletes_old_sealed_records_and_leaves_an_anchor(db):
    now = datetime.now(UTC)
    for n in range(4):
        _add(n, at=now - timedelta(days=3000 + n))
    late_old = None
    for n in range(4, 7):
        _add(n, at=now - timedelta(days=1))
    _seal_all()
    late_old = _add(7, at=now - timedelta(days=4000))  # sealed after newer records: kept for now
    _seal_all()
    anchor_source = AuditRecord.records.get(seq=4)

    purged = chain.purge(now - timedelta(days=2190), actor="admin", actor_kind=events.USER)
    assert purged == 4
    assert set(AuditRecord.records.values_list("detail__n", flat=True)) >= {4, 5, 6, 7}
    assert AuditRecord.records.filter(pk=late_old.pk).exists()
    assert not AuditPatient.objects.filter(patient_id__in=["PAT-0", "PAT-3"]).exists()
    anchor = AuditRecord.records.get(event_id=events.AUDIT_LOG_USED.value)
    assert (anchor.action, anchor.actor, anchor.actor_kind) == ("D", "admin", "user")
    assert anchor.detail["purged"] == 4
    assert (anchor.detail["anchor_seq"], anchor.detail["anchor_hash"]) == (4, anchor_source.record_hash)
    # The guard is back on after the purge, in the same transaction.
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cur:
        cur.execute("DELETE FROM audit_auditrecord WHERE id = %s", [late_old.pk])
    _seal_all()
    result = chain.verify()
    assert result.ok and result.checked == 5
    # A second purge continues from the first one's anchor.
    assert chain.purge(now + timedelta(days=1), actor="admin", actor_kind=events.USER) == 5
    _seal_all()
    result = chain.verify()
    assert result.ok and result.checked == 1


def test_verify_finds_records_missing_from_the_start_without_an_anchor(db):
    for n in range(3):
        _add(n)
    _seal_all()
    with connection.cursor() as cur:
        cur.execute("SELECT set_config('audit.purge', 'on', true)")
        cur.execute("DELETE FROM audit_auditpatient")
        cur.execute("DELETE FROM audit_auditrecord WHERE seq = 1")
        cur.execute("SELECT set_config('audit.purge', 'off', true)")
    assert [(b.kind, b.seq) for b in chain.verify().breaks] == [("start", 2), ("start", 2)]


def test_retention_task_keeps_for_ever_with_zero_days_and_purges_otherwise(db, settings):
    now = datetime.now(UTC)
    _add(1, at=now - timedelta(days=10))
    _add(2)
    settings.AUDIT_RETENTION_DAYS = 0
    assert tasks.purge() == 0
    settings.AUDIT_RETENTION_DAYS = 5
    assert tasks.purge() == 1
    assert tasks.seal() == 1
    assert chain.verify().ok
    assert settings.CELERY_BEAT_SCHEDULE["audit.seal"]["task"] == "audit.seal"
    assert settings.CELERY_BEAT_SCHEDULE["audit.purge"]["schedule"] == 86400.0


def test_two_concurrent_sealers_do_not_fork_the_chain(transactional_db):
    trail._insert([trail._entry(events.QUERY, action="R", actor=f"u{n}", actor_kind="user") for n in range(600)])
    start = threading.Barrier(2)
    sealed, errors = [], []

    def sealer():
        try:
            start.wait()
            while (n := chain.seal(limit=40)) > 0:
                sealed.append(n)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=sealer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert sum(sealed) == 600
    assert sorted(AuditRecord.records.values_list("seq", flat=True)) == list(range(1, 601))
    result = chain.verify()
    assert result.ok and result.checked == 600


def test_a_record_committed_late_is_sealed_in_the_next_pass(transactional_db):
    written, go_on, done = threading.Event(), threading.Event(), threading.Event()
    late = {}

    def slow_writer():
        try:
            with transaction.atomic():
                late["record"] = _add(0)
                written.set()
                go_on.wait(30)
        finally:
            connections.close_all()
            done.set()

    thread = threading.Thread(target=slow_writer)
    thread.start()
    assert written.wait(30)
    newer = _add(1)
    assert chain.seal() == 1  # the lower id is not committed yet
    go_on.set()
    assert done.wait(30)
    thread.join()
    assert late["record"].pk < newer.pk
    assert chain.seal() == 1
    assert AuditRecord.records.get(pk=late["record"].pk).seq == 2
    assert chain.verify().ok


def _database_url() -> str:
    s = connection.settings_dict
    return f"postgres://{s['USER']}:{s['PASSWORD'] or ''}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"
