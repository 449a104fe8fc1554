"""Database guards of the audit trail: append-only below the ORM.

An UPDATE of ``audit_auditrecord`` passes only when it seals a row not yet sealed: ``seq`` from
null to a value, ``record_hash`` from blank to a hash, every content column unchanged.  A DELETE
(of a record or of its patient rows) passes only while a retention purge runs: on PostgreSQL the
purge sets ``SET LOCAL audit.purge = 'on'`` in its transaction; on SQLite, which has no session
settings, it inserts a row into ``audit_purge_flag`` and deletes it again in the same transaction.

On SQLite, a later migration that alters these tables rebuilds them, which drops the triggers:
such a migration must create them again.
"""

from django.db import migrations

CONTENT = ("id", "occurred_at", "event_id", "event_type", "action", "outcome", "actor", "actor_kind",
           "source_address", "destination", "objects", "detail")

POSTGRESQL = """
CREATE FUNCTION audit_record_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF coalesce(current_setting('audit.purge', true), '') = 'on' THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'audit records are append-only: DELETE refused outside a retention purge'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    -- Nested: PL/pgSQL does not short-circuit AND, and audit_auditpatient has no seq.
    IF TG_TABLE_NAME = 'audit_auditrecord' THEN
        IF OLD.seq IS NULL AND OLD.record_hash = '' AND NEW.seq IS NOT NULL
           AND length(NEW.record_hash) = 64 AND length(NEW.prev_hash) = 64
           AND %(unchanged)s THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'audit records are append-only: UPDATE refused (only sealing an unsealed record)'
        USING ERRCODE = 'integrity_constraint_violation';
END
$$;
CREATE TRIGGER audit_record_guard BEFORE UPDATE OR DELETE ON audit_auditrecord
    FOR EACH ROW EXECUTE FUNCTION audit_record_guard();
CREATE TRIGGER audit_patient_guard BEFORE UPDATE OR DELETE ON audit_auditpatient
    FOR EACH ROW EXECUTE FUNCTION audit_record_guard();
""" % {"unchanged": " AND ".join(f"NEW.{c} IS NOT DISTINCT FROM OLD.{c}" for c in CONTENT)}

POSTGRESQL_REVERSE = """
DROP TRIGGER IF EXISTS audit_patient_guard ON audit_auditpatient;
DROP TRIGGER IF EXISTS audit_record_guard ON audit_auditrecord;
DROP FUNCTION IF EXISTS audit_record_guard();
"""

SQLITE = [
    "CREATE TABLE audit_purge_flag (active integer NOT NULL)",
    """CREATE TRIGGER audit_record_no_update BEFORE UPDATE ON audit_auditrecord
    WHEN NOT (OLD.seq IS NULL AND OLD.record_hash = '' AND NEW.seq IS NOT NULL
              AND length(NEW.record_hash) = 64 AND length(NEW.prev_hash) = 64 AND %s)
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only: UPDATE refused (only sealing an unsealed record)'); END"""
    % " AND ".join(f"NEW.{c} IS OLD.{c}" for c in CONTENT),
    """CREATE TRIGGER audit_record_no_delete BEFORE DELETE ON audit_auditrecord
    WHEN NOT EXISTS (SELECT 1 FROM audit_purge_flag)
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only: DELETE refused outside a retention purge'); END""",
    """CREATE TRIGGER audit_patient_no_update BEFORE UPDATE ON audit_auditpatient
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only: UPDATE refused'); END""",
    """CREATE TRIGGER audit_patient_no_delete BEFORE DELETE ON audit_auditpatient
    WHEN NOT EXISTS (SELECT 1 FROM audit_purge_flag)
    BEGIN SELECT RAISE(ABORT, 'audit records are append-only: DELETE refused outside a retention purge'); END""",
]

SQLITE_REVERSE = [
    "DROP TRIGGER IF EXISTS audit_patient_no_delete",
    "DROP TRIGGER IF EXISTS audit_patient_no_update",
    "DROP TRIGGER IF EXISTS audit_record_no_delete",
    "DROP TRIGGER IF EXISTS audit_record_no_update",
    "DROP TABLE IF EXISTS audit_purge_flag",
]


def _run(statements_by_vendor):
    def run(apps, schema_editor):
        vendor = schema_editor.connection.vendor
        if vendor not in statements_by_vendor:
            raise RuntimeError(f"the audit trail's guards exist for PostgreSQL and SQLite, not {vendor}")
        statements = statements_by_vendor[vendor]
        for statement in [statements] if isinstance(statements, str) else statements:
            schema_editor.execute(statement, params=None)
    return run


class Migration(migrations.Migration):

    dependencies = [("audit", "0001_initial")]

    operations = [
        migrations.RunPython(
            _run({"postgresql": POSTGRESQL, "sqlite": SQLITE}),
            _run({"postgresql": POSTGRESQL_REVERSE, "sqlite": SQLITE_REVERSE}),
        ),
    ]
