"""The HL7 intake on SQLite (the embedded default): new orders and patients written by the ORM
writer of ``ris.services.writers`` in a real SQLite database made by ``migrate`` -- accession
numbers from the allocation table, the same ACKs and rows as on PostgreSQL."""

from __future__ import annotations

import pytest

from tests.support.sqlite import SqliteEngine

SCRIPT = r'''
from pathlib import Path

from django.db import connection

from hl7gateway.intake import handle_payload
from ris.models import Order, Patient, PatientIdentifier, RequestedProcedure, Visit
from ris.services import writers

assert connection.vendor == "sqlite", connection.vendor
assert writers.current() is writers.orm
FIXTURES = Path("tests/fixtures/hl7")


def send(name, **replace):
    raw = (FIXTURES / name).read_bytes()
    for old, new in replace.items():
        raw = raw.replace(old.encode(), new.encode())
    ack = handle_payload(raw, "127.0.0.1:1").decode()
    msa = next(s for s in ack.split("\r") if s.startswith("MSA")).split("|")
    err = next((s for s in ack.split("\r") if s.startswith("ERR")), "")
    return msa[1], err


assert send("epic_orm_o01_nw.hl7") == ("AA", "")
patient = Patient.objects.get(identifiers__id_number="E1000001")
assert sorted(patient.identifiers.values_list("id_number", flat=True)) == ["900-00-0001", "E1000001"]
assert sorted(RequestedProcedure.objects.values_list("accession_number", flat=True)) == ["EA100001", "EA100002"]
code, err = send("epic_orm_o01_nw.hl7", EPC000101="EPC000102")
assert code == "AE" and err.startswith("ERR|ORC^1^2^205"), err
assert send("smallvendor_orm_o01_nw_lf.hl7") == ("AA", "")
assigned = RequestedProcedure.objects.get(order__placer_order_number="SV30001")
assert assigned.accession_assigned_by_us and assigned.accession_number == assigned.requested_procedure_id
assert send("smallvendor_orm_o01_nw_lf.hl7", SV30001="SV30002", **{"|42|": "|43|"}) == ("AA", "")
assert PatientIdentifier.objects.filter(id_number="S3000003").count() == 1
assert Visit.objects.filter(patient__identifiers__id_number="E1000001").count() == 1
assert send("cerner_adt_a04.hl7")[0] == "AA"
assert send("cerner_adt_a08.hl7")[0] == "AA"
jane = Patient.objects.get(identifiers__id_number="C2000010")
assert (jane.patient_name, str(jane.patient_birth_date)) == ("Doe-Smith^Jane^Q", "1970-11-12"), jane.patient_name
assert jane.visits.count() == 1
assert Order.objects.count() == 3
print("sqlite orders ok")
'''


@pytest.mark.socket  # the engine's own process (manage.py)
def test_orders_and_patients_on_sqlite(tmp_path):
    SqliteEngine(tmp_path, "orders.sqlite3").run_script(SCRIPT, "sqlite orders ok")
