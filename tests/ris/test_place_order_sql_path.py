"""The two writers of a new order's plan (``ris.services.writers``): PostgreSQL statements
(two for a known patient) against the ORM.

The same messages are placed once through each writer and the stored rows compared field by
field (apart from keys, times and generated identifiers); the raw INSERTs must name every
column of the models; the error cases give the same errors, before anything is written.
"""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from hl7gateway.mapping import map_message
from hl7gateway.parsing import parse
from ris import auditing
from ris.errors import DuplicateKey
from ris.models import Order, Patient, PatientIdentifier, RequestedProcedure, ScheduledProcedureStep, Visit
from ris.services import orders, patients, plans, writers
from ris.services.writers import postgres
from tests.support.hl7 import fixture

pytestmark = pytest.mark.django_db

SKIP = {"id", "created_at", "updated_at", "order", "order_id", "patient", "patient_id", "visit", "visit_id",
        "requested_procedure", "requested_procedure_id", "accession_number", "study_instance_uid"}


@pytest.fixture(params=["sql", "orm"])
def path(request, monkeypatch):
    monkeypatch.setattr(writers, "SQL_FAST_PATH", request.param == "sql")
    return request.param


def command(name: str, **replace: str):
    raw = fixture(name)
    for old, new in replace.items():
        raw = raw.replace(old.encode(), new.encode())
    return map_message(parse(raw))[0]


def snapshot(order_pk: int) -> dict:
    """The stored order, its visit, procedures and steps as plain values (keys and times left out)."""
    def values(obj, extra_skip=()):
        return {f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields
                if f.name not in SKIP and f.attname not in SKIP and f.name not in extra_skip}

    order = Order.objects.get(pk=order_pk)
    rps = list(order.procedures.order_by("pk"))
    return {
        "order": values(order),
        "visit": values(order.visit) if order.visit else None,
        "procedures": [{**values(rp, ("requested_procedure_id",)),
                        "rp_id_is_accession": rp.requested_procedure_id == rp.accession_number,
                        "accession": "assigned" if rp.accession_assigned_by_us else rp.accession_number,
                        "uid": rp.study_instance_uid if not rp.study_instance_uid.startswith("2.25.") else "generated",
                        "steps": [{**values(s, ("scheduled_procedure_step_id", "scheduled_start")),
                                   "sps_id_is_rp_id": s.scheduled_procedure_step_id == rp.requested_procedure_id}
                                  for s in rp.steps.order_by("pk")]}
                       for rp in rps],
    }


@pytest.mark.parametrize("name", ["epic_orm_o01_nw.hl7", "smallvendor_orm_o01_nw_lf.hl7",
                                  "cerner_orm_o01_nw_crlf.hl7", "omi_o23_nw.hl7"])
def test_both_paths_store_the_same_rows(name, monkeypatch):
    stored = {}
    for which, placer_suffix in (("orm", "-orm"), ("sql", "-sql")):
        monkeypatch.setattr(writers, "SQL_FAST_PATH", which == "sql")
        cmd = command(name)
        cmd.placer_order_number += placer_suffix
        cmd.filler_order_number = cmd.filler_order_number and cmd.filler_order_number + placer_suffix
        for proc in cmd.procedures:  # sent identifiers must stay unique between the two placements
            proc.accession_number = proc.accession_number and (proc.accession_number + placer_suffix[:2])[:16]
            proc.study_instance_uid = proc.study_instance_uid and proc.study_instance_uid + placer_suffix[1:2].replace(
                "o", "1").replace("s", "2")
        effect = orders.place_order(cmd)
        snap = snapshot(effect["order"])
        for key in ("placer_order_number", "filler_order_number"):
            snap["order"][key] = snap["order"][key].removesuffix(placer_suffix)
        for rp in snap["procedures"]:
            rp["accession"] = rp["accession"].removesuffix(placer_suffix[:2]) if rp["accession"] != "assigned" else \
                "assigned"
            rp["uid"] = rp["uid"] if rp["uid"] == "generated" else rp["uid"][:-1]
        assert effect["accession_numbers"] == list(
            RequestedProcedure.objects.filter(order_id=effect["order"]).order_by("pk")
            .values_list("accession_number", flat=True))
        assert effect["procedures"] == list(
            RequestedProcedure.objects.filter(order_id=effect["order"]).order_by("pk").values_list("pk", flat=True))
        stored[which] = snap
    assert stored["sql"] == stored["orm"]
    assert stored["sql"]["procedures"] and all(rp["steps"] for rp in stored["sql"]["procedures"])


def _insert_columns(table: str) -> set[str]:
    m = re.search(rf"INSERT INTO {table} \(([^)]*)\)", postgres._PG_INSERT)
    return {c.strip() for c in m.group(1).split(",")}


@pytest.mark.parametrize("model", [Visit, Order, RequestedProcedure, ScheduledProcedureStep])
def test_the_insert_chain_names_every_column(model):
    columns = {f.column for f in model._meta.concrete_fields if not f.primary_key}
    assert _insert_columns(model._meta.db_table) == columns


def test_the_new_patient_insert_names_every_column():
    for model in (Patient, PatientIdentifier):
        table = model._meta.db_table
        m = re.search(rf"INSERT INTO {table} \(([^)]*)\)", postgres._PG_CREATE)
        assert {c.strip() for c in m.group(1).split(",")} == {
            f.column for f in model._meta.concrete_fields if not f.primary_key}


def test_new_patient_rows_are_the_same_on_both_paths(monkeypatch):
    stored = []
    for which, mrn in (("orm", "S3000003"), ("sql", "S3000004")):
        monkeypatch.setattr(writers, "SQL_FAST_PATH", which == "sql")
        cmd = command("smallvendor_orm_o01_nw_lf.hl7", S3000003=mrn, SV30001=f"SV{which}")
        cmd.visit = cmd.visit or type(command("epic_orm_o01_nw.hl7").visit)(visit_number=f"V-{which}")
        effect = orders.place_order(cmd)
        patient = Patient.objects.get(pk=effect["patient"])
        ident = patient.identifiers.get()
        visit = Order.objects.get(pk=effect["order"]).visit
        stored.append(({f.attname: getattr(patient, f.attname) for f in Patient._meta.concrete_fields
                        if f.name not in SKIP}, (ident.assigning_authority, ident.identifier_type_code),
                       {f.attname: getattr(visit, f.attname) for f in Visit._meta.concrete_fields
                        if f.name not in SKIP and f.name != "visit_number"}))
    assert stored[0] == stored[1]


def test_known_patient_order_takes_two_statements_and_updates_demographics_and_visit(settings):
    settings.PRIORS_ENABLED = False  # the writer's statements only: not the prior search pacs records (one INSERT)
    orders.place_order(command("smallvendor_orm_o01_nw_lf.hl7"))
    patient = Patient.objects.get(identifiers__id_number="S3000003")
    # The same patient again, new name and visit data, another order.
    cmd = command("smallvendor_orm_o01_nw_lf.hl7", SV30001="SV30002")
    cmd.patient.patient_name = "Renamed^Rita"
    # As in the HL7 intake: the audit records are gathered, and written there in one statement.
    with auditing.collecting() as audit_records, CaptureQueriesContext(connection) as queries:
        effect = orders.place_order(cmd)
    assert [(r.event_id, r.action) for r in audit_records] == [("110110", "U"), ("110109", "C")]
    patient.refresh_from_db()
    assert patient.patient_name == "Renamed^Rita"
    assert effect["patient"] == patient.pk
    # lookup, patient UPDATE (the name changed), INSERT chain
    assert len(queries.captured_queries) == 3, [q["sql"][:60] for q in queries.captured_queries]
    cmd = command("smallvendor_orm_o01_nw_lf.hl7", SV30001="SV30003")
    cmd.patient.patient_name = "Renamed^Rita"  # nothing changed: lookup and INSERT chain only
    with auditing.collecting(), CaptureQueriesContext(connection) as queries:
        orders.place_order(cmd)
    assert len(queries.captured_queries) == 2
    assert Order.objects.filter(patient=patient).count() == 3


def test_existing_visit_is_reused_and_updated(path):
    first = orders.place_order(command("epic_orm_o01_nw.hl7"))
    visit = Order.objects.get(pk=first["order"]).visit
    cmd = command("epic_orm_o01_nw.hl7", P10001="P10009", EA100001="EA900001", EA100002="EA900002",
                  **{"1.2.826.0.1.3680043.10.1234.100": "1.2.826.0.1.3680043.10.1234.900"})
    cmd.visit.assigned_location = "NEWWARD"
    second = orders.place_order(cmd)
    order = Order.objects.get(pk=second["order"])
    assert order.visit_id == visit.pk
    visit.refresh_from_db()
    assert visit.assigned_location == "NEWWARD"
    assert Visit.objects.filter(patient_id=order.patient_id).count() == 1


def test_merged_patient_gets_the_order_on_the_survivor(path):
    orders.place_order(command("epic_orm_o01_nw.hl7"))
    survivor = Patient.objects.get(identifiers__id_number="E1000001")
    retired = Patient.objects.create(patient_name="Old^Record", merged_into=survivor)
    PatientIdentifier.objects.create(patient=retired, id_number="OLD1", assigning_authority="SYNTHMRN")
    cmd = command("smallvendor_orm_o01_nw_lf.hl7")
    cmd.patient.identifiers[0] = type(cmd.patient.identifiers[0])("OLD1", "SYNTHMRN", "MR")
    effect = orders.place_order(cmd)
    assert effect["patient"] == survivor.pk


def test_new_patient_is_created_once_with_its_visit(path):
    effect = orders.place_order(command("smallvendor_orm_o01_nw_lf.hl7"))
    patient = Patient.objects.get(identifiers__id_number="S3000003")
    assert effect["patient"] == patient.pk
    assert Order.objects.get(pk=effect["order"]).patient_id == patient.pk
    assert patients.find_patient(command("smallvendor_orm_o01_nw_lf.hl7").patient.primary).pk == patient.pk


@pytest.mark.parametrize("case", ["used_accession", "used_uid", "same_accession_twice", "same_order"])
def test_duplicates_are_refused_the_same_way_on_both_paths(case, path):
    orders.place_order(command("epic_orm_o01_nw.hl7"))
    before = (Order.objects.count(), RequestedProcedure.objects.count())
    cmd = command("epic_orm_o01_nw.hl7", P10001="P10002")
    uid_fix = {"1.2.826.0.1.3680043.10.1234.100": "1.2.826.0.1.3680043.10.1234.200"}
    if case == "used_accession":
        cmd = command("epic_orm_o01_nw.hl7", P10001="P10002", **uid_fix)
        location, text = cmd.procedures[0].location + "^18", "accession number EA100001 is already used"
    elif case == "used_uid":
        cmd = command("epic_orm_o01_nw.hl7", P10001="P10002", EA100001="EA200001", EA100002="EA200002")
        location, text = cmd.procedures[0].location + "^1", "Study Instance UID 1.2.826.0.1.3680043.10.1234.1001"
    elif case == "same_accession_twice":
        cmd = command("epic_orm_o01_nw.hl7", P10001="P10002", EA100001="EA300001", EA100002="EA300001", **uid_fix)
        location, text = cmd.procedures[1].location + "^18", "accession number EA300001 is already used"
    else:
        cmd = command("epic_orm_o01_nw.hl7")
        location, text = cmd.location + "^2", "order P10001 already exists"
    with pytest.raises(DuplicateKey) as exc:
        orders.place_order(cmd)
    assert exc.value.location == location and text in str(exc.value)
    # the plan refuses before either writer writes
    assert (Order.objects.count(), RequestedProcedure.objects.count()) == before


@pytest.mark.django_db(transaction=True)
def test_hot_statements_are_prepared_with_generic_plans():
    """``ris.services.pg``: set up outside the first transaction, then each statement is parsed
    and planned once per connection (the listener's case: one durable transaction per message)."""
    from django.db import transaction

    for i in range(3):
        with transaction.atomic(durable=True):
            orders.place_order(command("smallvendor_orm_o01_nw_lf.hl7", SV30001=f"PREP{i}"))
    with connection.cursor() as cursor:
        cursor.execute("SHOW plan_cache_mode")
        assert cursor.fetchone()[0] == "force_generic_plan"
        cursor.execute("SELECT statement, generic_plans FROM pg_prepared_statements")
        prepared = cursor.fetchall()
    chain = [plans for statement, plans in prepared if "INSERT INTO ris_order" in statement]
    assert chain and sum(chain) == 3  # one statement text, both patient cases, executed 3 times
    assert Order.objects.filter(placer_order_number__startswith="PREP").count() == 3


def test_other_identifiers_are_added_once_and_a_known_patient_takes_two_statements(path, settings):
    settings.PRIORS_ENABLED = False  # the writer's statements only: not the prior search pacs records (one INSERT)
    orders.place_order(command("epic_orm_o01_nw.hl7"))
    patient = Patient.objects.get(identifiers__id_number="E1000001")
    cmd = command("epic_orm_o01_nw.hl7", P10001="P10002", EA100001="EA900001", EA100002="EA900002",
                  **{"1.2.826.0.1.3680043.10.1234.100": "1.2.826.0.1.3680043.10.1234.900"})
    with auditing.collecting(), CaptureQueriesContext(connection) as queries:
        effect = orders.place_order(cmd)
    assert effect["patient"] == patient.pk
    assert sorted(patient.identifiers.values_list("id_number", flat=True)) == ["900-00-0001", "E1000001"]
    if path == "sql":  # lookup (the second identifier found held) and INSERT chain
        assert len(queries.captured_queries) == 2, [q["sql"][:60] for q in queries.captured_queries]


def test_a_patient_registered_between_read_and_write_is_read_again(path, monkeypatch):
    """Another connection registered the patient after the lookup: the writer refuses the stale
    plan before writing, and the order is placed on a fresh read."""
    first = orders.place_order(command("smallvendor_orm_o01_nw_lf.hl7"))
    store = writers.current()
    read = store.read_new_order
    reads = []

    def stale_first(cmd):
        seen = read(cmd)
        if not reads:
            seen.patient = plans.PatientSeen()  # as read before the other registration committed
        reads.append(seen)
        return seen

    monkeypatch.setattr(store, "read_new_order", stale_first)
    with auditing.collecting() as audit_records:
        effect = orders.place_order(command("smallvendor_orm_o01_nw_lf.hl7", SV30001="SV30002"))
    assert len(reads) == 2
    assert effect["patient"] == first["patient"]
    assert PatientIdentifier.objects.filter(id_number="S3000003").count() == 1
    assert [(r.event_id, r.action) for r in audit_records] == [("110109", "C")]
