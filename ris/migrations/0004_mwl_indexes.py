"""Indexes for MWL C-FIND matching (pacs.dimse.matching), outside the model state.

PatientName is matched as ``UPPER(patient_name) LIKE UPPER(pattern)`` when
MWL_PATIENT_NAME_CASE_INSENSITIVE is on, and IDs / accession numbers with ``LIKE``
for ``*`` / ``?`` wildcards.  PostgreSQL can use a b-tree for a left-anchored LIKE only
with the *_pattern_ops operator class (the database collation is not "C").
Expression indexes are not declared on the models: they are the MWL's concern.
"""

from django.db import migrations

POSTGRES = [
    ("ris_patient_upper_name_mwl_idx", "ris_patient", "(UPPER(patient_name) varchar_pattern_ops)"),
    ("ris_patient_name_pattern_mwl_idx", "ris_patient", "(patient_name varchar_pattern_ops)"),
    ("ris_patientid_number_pattern_mwl_idx", "ris_patientidentifier", "(id_number varchar_pattern_ops)"),
    ("ris_rp_accession_pattern_mwl_idx", "ris_requestedprocedure", "(accession_number varchar_pattern_ops)"),
]
SQLITE = [
    ("ris_patient_upper_name_mwl_idx", "ris_patient", "(UPPER(patient_name))"),
]


def create(apps, schema_editor):
    indexes = POSTGRES if schema_editor.connection.vendor == "postgresql" else SQLITE
    for name, table, expression in indexes:
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} {expression}")


def drop(apps, schema_editor):
    indexes = POSTGRES if schema_editor.connection.vendor == "postgresql" else SQLITE
    for name, _table, _expression in indexes:
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [("ris", "0003_reports")]
    operations = [migrations.RunPython(create, drop)]
