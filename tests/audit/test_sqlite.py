"""The audit trail on SQLite (the laptop default): the same guards as triggers of SQLite's own,
the purge flag table, seal, verify and purge, in a real SQLite database made by ``migrate``."""

from __future__ import annotations

import pytest

from tests.support.sqlite import SqliteEngine

SCRIPT = r'''
from datetime import UTC, datetime, timedelta

from django.db import DatabaseError, connection, transaction

from audit import chain, trail
from project.auditing import events
from audit.models import AuditPatient, AuditRecord

assert connection.vendor == "sqlite", connection.vendor
now = datetime.now(UTC)
old = [trail.record(events.QUERY, action="R", actor="CT1", actor_kind="dicom", patients=[(f"P{n}", "H")],
                    occurred_at=now - timedelta(days=10)) for n in range(3)]
new = trail.record(events.PATIENT_RECORD, action="U", actor="alice", actor_kind="user", patients=[("P9", "H")],
                   detail={"before": {"a": 1}, "after": {"a": 2}})
trail.record_soon(events.QUERY, action="R", actor="bob", actor_kind="user", patients=[("P9", "H")])
assert trail.flush(timeout=30)
assert chain.seal() == 5
assert chain.verify().ok

statements = [
    "UPDATE audit_auditrecord SET actor = 'mallory' WHERE id = %s",
    "UPDATE audit_auditrecord SET seq = 99, prev_hash = '" + "0" * 64 + "', record_hash = '" + "a" * 64 + "' WHERE id = %s",
    "DELETE FROM audit_auditrecord WHERE id = %s",
    "UPDATE audit_auditpatient SET patient_id = 'X' WHERE record_id = %s",
    "DELETE FROM audit_auditpatient WHERE record_id = %s",
]
for statement in statements:
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement, [old[0].pk])
    except DatabaseError as exc:
        assert "append-only" in str(exc), exc
    else:
        raise AssertionError("not refused: " + statement)

assert chain.purge(now - timedelta(days=5), actor="admin", actor_kind="user") == 3
with connection.cursor() as cursor:
    cursor.execute("SELECT count(*) FROM audit_purge_flag")
    assert cursor.fetchone() == (0,)
assert not AuditPatient.objects.filter(patient_id="P0").exists()
try:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditrecord WHERE id = %s", [new.pk])
except DatabaseError:
    pass
else:
    raise AssertionError("DELETE allowed after the purge")
assert chain.seal() == 1
result = chain.verify()
assert result.ok and result.checked == 3, result

with connection.cursor() as cursor:  # behind the guard: found by verify
    cursor.execute("DROP TRIGGER audit_record_no_update")
    cursor.execute("UPDATE audit_auditrecord SET actor = 'somebody else' WHERE id = %s", [new.pk])
assert [b.kind for b in chain.verify().breaks] == ["hash"]
print("sqlite audit trail ok")
'''


@pytest.mark.socket  # the engine's own processes (manage.py) on SQLite
def test_the_audit_trail_on_sqlite(tmp_path):
    engine = SqliteEngine(tmp_path, "audit.sqlite3")
    engine.run_script(SCRIPT, "sqlite audit trail ok")
    verify = engine.manage("verify_audit")
    assert verify.returncode == 1
    assert "3 records checked, 1 breaks" in verify.stdout
