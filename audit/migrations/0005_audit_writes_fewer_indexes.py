"""The audit tables take fewer writes per record on PostgreSQL: ``seq`` is unique among sealed
records only (a partial unique index: no entry for the null of an unsealed record) and the patient
rows keep no foreign key constraint (one check less per row at every audited commit).

On SQLite (the embedded default) the tables stay as they are: SQLite would rebuild them for these
changes, which it cannot do for a model with a field named ``objects``, and the append-only
triggers would go with them; the model state changes alike on both."""

import django.db.models.deletion
from django.db import migrations, models

_FIND = """
SELECT c.conname FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
WHERE t.relname = %s AND c.contype = %s
  AND c.conkey = ARRAY[(SELECT attnum FROM pg_attribute WHERE attrelid = t.oid AND attname = %s)]::int2[]
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        for table, kind, column in (("audit_auditrecord", "u", "seq"), ("audit_auditpatient", "f", "record_id")):
            cursor.execute(_FIND, [table, kind, column])
            for (name,) in cursor.fetchall():
                cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        cursor.execute("CREATE UNIQUE INDEX audit_seq ON audit_auditrecord (seq) WHERE seq IS NOT NULL")


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("DROP INDEX IF EXISTS audit_seq")
        cursor.execute("ALTER TABLE audit_auditrecord ADD CONSTRAINT audit_auditrecord_seq_key UNIQUE (seq)")
        cursor.execute("ALTER TABLE audit_auditpatient ADD CONSTRAINT audit_auditpatient_record_id_fk "
                       "FOREIGN KEY (record_id) REFERENCES audit_auditrecord (id) DEFERRABLE INITIALLY DEFERRED")


class Migration(migrations.Migration):

    dependencies = [
        ('audit', '0004_chain_check'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(forwards, backwards)],
            state_operations=[
                migrations.AlterField(
                    model_name='auditpatient',
                    name='record',
                    field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.DO_NOTHING,
                                            related_name='patients', to='audit.auditrecord'),
                ),
                migrations.AlterField(
                    model_name='auditrecord',
                    name='seq',
                    field=models.BigIntegerField(blank=True, null=True),
                ),
                migrations.AddConstraint(
                    model_name='auditrecord',
                    constraint=models.UniqueConstraint(condition=models.Q(('seq__isnull', False)), fields=('seq',),
                                                       name='audit_seq'),
                ),
            ],
        ),
    ]
