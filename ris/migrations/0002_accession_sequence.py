"""The accession number sequence on PostgreSQL (SQLite uses AccessionNumberAllocation rows)."""

from django.db import migrations


def create_sequence(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("CREATE SEQUENCE IF NOT EXISTS ris_accession_number_seq START 1")


def drop_sequence(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("DROP SEQUENCE IF EXISTS ris_accession_number_seq")


class Migration(migrations.Migration):
    dependencies = [("ris", "0001_initial")]
    operations = [migrations.RunPython(create_sequence, drop_sequence)]
