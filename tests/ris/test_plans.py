"""Tier 1: what placing a new order and registering a patient decide (``ris.services.plans``),
from commands and what the database holds given as plain values -- no database."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from django.conf import settings

from project.auditing import events
from ris import states
from ris.commands import OrderCommand, PatientData, PatientIdentity, ProcedureData, StepData, VisitData
from ris.errors import DuplicateKey, RequiredFieldMissing
from ris.services import identifiers, plans

NOW = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
START = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


def patient(*identifiers: PatientIdentity, **values) -> PatientData:
    return PatientData(list(identifiers or [PatientIdentity("MRN1", "HOSP", "MR")]), **values)


def order(*procedures: ProcedureData, **values) -> OrderCommand:
    return OrderCommand(order_control="NW", order_status="", patient=patient(patient_name="Doe^Jane"),
                        placer_order_number="P1", placer_namespace="EHR", procedures=list(procedures),
                        sending_application="EHR", **values)


def proc(accession: str = "", uid: str = "", rp_id: str = "", *steps: StepData, location: str = "OBR^1") -> ProcedureData:
    return ProcedureData(requested_procedure_id=rp_id, accession_number=accession, study_instance_uid=uid,
                         steps=list(steps or [StepData("", "CT")]), location=location)


def uids():
    n = iter(range(1, 100))
    return lambda: f"2.25.{next(n)}"


def test_a_new_patient_is_registered_with_its_identifiers_and_audited_as_created():
    data = patient(PatientIdentity("MRN1", "HOSP", "MR"), PatientIdentity("SSN1", "SSA", "SS"),
                   PatientIdentity("MRN1", "HOSP", "MR"), PatientIdentity("HELD", "OTHER"),
                   PatientIdentity("SSN1", "SSA", "XX"), patient_name="Doe^Jane", patient_sex="F")
    plan = plans.patient_plan(data, plans.PatientSeen(known_identifiers=frozenset({("HELD", "OTHER")})))
    assert plan.create and plan.primary == data.primary
    assert plan.values == {"patient_name": "Doe^Jane", "patient_birth_date": None, "patient_sex": "F"}
    # the primary is not added twice, one held by another patient stays there, the first repetition wins
    assert plan.add_identifiers == [PatientIdentity("SSN1", "SSA", "SS")]
    (audit,) = plan.audits
    assert (audit.event_id, audit.action) == (events.PATIENT_RECORD, events.CREATE)
    assert audit.patients == [(i.id_number, i.assigning_authority) for i in data.identifiers]


def test_a_known_patient_takes_the_non_empty_demographics_that_differ():
    seen = plans.PatientSeen(7, "Doe^Jane", date(1980, 2, 15), "F")
    plan = plans.patient_plan(patient(patient_name="Roe^Jane", patient_birth_date=date(1980, 2, 15)), seen)
    assert (plan.pk, plan.create, plan.values) == (7, False, {"patient_name": "Roe^Jane"})
    (audit,) = plan.audits
    assert (audit.action, audit.patients) == (events.UPDATE, [("MRN1", "HOSP")])
    assert audit.detail == {"changed": {"patient_name": {"old": "Doe^Jane", "new": "Roe^Jane"}}}
    unchanged = plans.patient_plan(patient(patient_name="Doe^Jane"), seen)
    assert (unchanged.values, unchanged.audits, unchanged.add_identifiers) == ({}, [], [])


def test_the_visit_is_created_or_takes_the_non_empty_fields_that_differ():
    assert plans.visit_plan(None, plans.VisitSeen(3)) is None
    data = VisitData("V1", patient_class="O", assigned_location="RAD")
    new = plans.visit_plan(data, None)
    assert (new.pk, new.visit_number, new.values) == (None, "V1", {
        "patient_class": "O", "assigned_location": "RAD", "referring_physician_name": "", "admit_datetime": None})
    known = plans.visit_plan(data, plans.VisitSeen(3, patient_class="O", assigned_location="ER",
                                                   referring_physician_name="Smith^Sam"))
    assert (known.pk, known.values) == (3, {"assigned_location": "RAD"})


def test_a_new_order_assigns_the_missing_identifiers_in_order():
    cmd = order(proc(), proc("SENT1", "1.2.3", "RP9", StepData("", "MR"), StepData("", "MR", scheduled_start=START)),
                proc())
    seen = plans.OrderSeen(plans.PatientSeen(), numbers=[41, 42])
    plan = plans.new_order_plan(cmd, states.SPS_SCHEDULED, seen, now=NOW, new_uid=uids())
    assigned = [identifiers.accession_number_for(41), identifiers.accession_number_for(42)]
    assert plan.accession_numbers == [assigned[0], "SENT1", assigned[1]]
    first, sent, third = (p.values for p in plan.procedures)
    assert (first["study_instance_uid"], sent["study_instance_uid"], third["study_instance_uid"]) == (
        "2.25.1", "1.2.3", "2.25.2")
    assert (first["accession_assigned_by_us"], first["accession_number_issuer"]) == (True, settings.ACCESSION_NUMBER_ISSUER)
    assert (sent["accession_assigned_by_us"], sent["accession_number_issuer"]) == (False, "")
    # missing requested procedure ID: the accession number; missing step ID: the procedure ID,
    # numbered when several steps lack one; missing start: now
    assert first["requested_procedure_id"] == assigned[0] and sent["requested_procedure_id"] == "RP9"
    assert first["requested_procedure_priority"] == states.PRIORITY_ROUTINE
    assert [(s["scheduled_procedure_step_id"], s["scheduled_start"]) for s in plan.procedures[1].steps] == [
        ("RP9", NOW), ("RP9.2", START)]
    assert plan.values["placer_order_number"] == "P1" and plan.patient.create
    assert [(a.event_id, a.action) for a in plan.audits] == [
        (events.PATIENT_RECORD, events.CREATE), (events.ORDER_RECORD, events.CREATE)]
    assert plan.audits[1].objects[0] == {"type": "order", "id": "P1", "issuer": "EHR",
                                         "detail": "placer order number"}


@pytest.mark.parametrize("case, location, text", [
    ("order_exists", "ORC^1^2", "order P1 already exists"),
    ("no_procedure", "ORC^1", "new order without a procedure"),
    ("used_accession", "OBR^2^18", "accession number A2 is already used"),
    ("same_accession_twice", "OBR^2^18", "accession number A1 is already used"),
    ("used_uid", "OBR^1^1", "Study Instance UID 1.2.9 is already used"),
    ("same_uid_twice", "OBR^2^1", "Study Instance UID 1.2.1 is already used"),
])
def test_a_new_order_is_refused_with_the_error_to_answer(case, location, text):
    procedures = {"no_procedure": [], "same_accession_twice": [proc("A1", "1.2.1"), proc("A1", "1.2.2", location="OBR^2")],
                  "same_uid_twice": [proc("A1", "1.2.1"), proc("A2", "1.2.1", location="OBR^2")],
                  "used_uid": [proc("A1", "1.2.9"), proc("A2", "1.2.2", location="OBR^2")]}.get(
        case, [proc("A1", "1.2.1"), proc("A2", "1.2.2", location="OBR^2")])
    seen = plans.OrderSeen(plans.PatientSeen(), order_exists=case == "order_exists",
                           used_accessions=frozenset({"A2"} if case == "used_accession" else ()),
                           used_uids=frozenset({"1.2.9"}))
    error = RequiredFieldMissing if case == "no_procedure" else DuplicateKey
    with pytest.raises(error) as exc:
        plans.new_order_plan(order(*procedures), states.SPS_SCHEDULED, seen, now=NOW, new_uid=uids())
    assert (exc.value.location, str(exc.value)) == (location, text)
