"""Tier 2: the order and patient services against PostgreSQL, fed with mapped fixture messages,
and the store-and-apply step of the HL7 intake (one transaction, duplicates, collisions)."""

from __future__ import annotations

import pytest

from hl7gateway.intake import handle_payload
from hl7gateway.mapping import map_message
from hl7gateway.models import InboundMessage
from hl7gateway.parsing import parse
from ris import states
from ris.models import (
    Order,
    Patient,
    PatientIdentifier,
    PatientMerge,
    RequestedProcedure,
    ScheduledProcedureStep,
    StatusChange,
)
from ris.services import orders, patients, writers
from tests.support.hl7 import ack_fields, fixture, with_control_id

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True, params=["sql", "orm"])
def place_order_path(request, monkeypatch):
    """Every test on both ways of placing a new order (PostgreSQL statements, ORM)."""
    monkeypatch.setattr(writers, "SQL_FAST_PATH", request.param == "sql")
    return request.param


def cmds(name: str, control_id: str | None = None):
    raw = fixture(name)
    return map_message(parse(with_control_id(raw, control_id) if control_id else raw))


def test_place_order_with_two_procedures_uses_sent_identifiers():
    (cmd,) = cmds("epic_orm_o01_nw.hl7")
    effect = orders.apply_order(cmd)
    order = Order.objects.get(pk=effect["order"])
    assert (order.placer_order_number, order.placer_namespace) == ("P10001", "EPIC")
    assert order.patient.patient_name == "Testpatient^Anna^Maria^Ms"
    assert sorted(order.patient.identifiers.values_list("id_number", flat=True)) == ["900-00-0001", "E1000001"]
    assert order.visit.visit_number == "V5000001"
    rps = list(order.procedures.order_by("accession_number"))
    assert [rp.accession_number for rp in rps] == ["EA100001", "EA100002"]
    assert [rp.accession_assigned_by_us for rp in rps] == [False, False]
    assert rps[0].study_instance_uid == "1.2.826.0.1.3680043.10.1234.1001"
    assert rps[1].requested_procedure_priority == states.PRIORITY_STAT
    step = rps[0].steps.get()
    assert (step.scheduled_procedure_step_id, step.modality, step.status) == ("SPS100001", "CT", "SCHEDULED")


def test_missing_identifiers_are_assigned(settings):
    settings.HL7_STATION_AE_BY_MODALITY = "DX=DX_ROOM1"
    (cmd,) = cmds("smallvendor_orm_o01_nw_lf.hl7")
    orders.apply_order(cmd)
    rp = RequestedProcedure.objects.get(order__placer_order_number="SV30001")
    assert rp.accession_assigned_by_us and rp.accession_number.startswith("RAD")
    assert rp.accession_number_issuer == settings.ACCESSION_NUMBER_ISSUER
    assert rp.study_instance_uid.startswith("2.25.") and rp.requested_procedure_id == rp.accession_number
    step = rp.steps.get()
    assert step.scheduled_procedure_step_id == rp.requested_procedure_id
    assert step.scheduled_station_ae_title == "DX_ROOM1"


def test_two_orders_get_distinct_accession_numbers():
    (a,) = cmds("smallvendor_orm_o01_nw_lf.hl7")
    (b,) = map_message(parse(fixture("smallvendor_orm_o01_nw_lf.hl7").replace(b"SV30001", b"SV30002")))
    orders.apply_order(a)
    orders.apply_order(b)
    assert RequestedProcedure.objects.values("accession_number").distinct().count() == 2
    assert Patient.objects.count() == 1  # same PID-3: one patient


def test_omi_two_ipc_two_steps():
    (cmd,) = cmds("omi_o23_nw.hl7")
    orders.apply_order(cmd)
    rp = RequestedProcedure.objects.get(accession_number="EA400001")
    assert list(rp.steps.order_by("scheduled_procedure_step_id").values_list("modality", "scheduled_station_ae_title")) \
        == [("CT", "PETCT1"), ("PT", "PETCT1")]


@pytest.mark.parametrize("name,step_status,rp_status", [
    ("epic_orm_o01_ca.hl7", "CANCELED", "CANCELED"),
    ("epic_orm_o01_dc.hl7", "DISCONTINUED", "DISCONTINUED"),
    ("epic_orm_o01_xo_cm.hl7", "COMPLETED", "COMPLETED"),
    ("epic_orm_o01_sc_ip.hl7", "STARTED", "IN_PROGRESS"),
])
def test_order_control_maps_to_step_status_through_transitions(name, step_status, rp_status):
    orders.apply_order(cmds("epic_orm_o01_nw.hl7")[0])
    effect = orders.apply_order(cmds(name)[0])
    step = ScheduledProcedureStep.objects.get(scheduled_procedure_step_id="SPS100001")
    assert step.status == step_status and step.requested_procedure.status == rp_status
    # only the procedure named by OBR-18 changed; the other stays scheduled
    assert ScheduledProcedureStep.objects.get(scheduled_procedure_step_id="SPS100002").status == "SCHEDULED"
    change = StatusChange.objects.get(entity="sps", object_id=step.pk)
    assert (change.from_status, change.to_status, change.actor) == ("SCHEDULED", step_status, "EPIC")
    assert change.cause.startswith("HL7 ORM^O01")
    assert effect["steps_changed"] == [step.pk]


def test_cancel_unknown_order_is_unknown_key():
    from ris.errors import UnknownKey

    with pytest.raises(UnknownKey) as ei:
        orders.apply_order(cmds("epic_orm_o01_ca.hl7")[0])
    assert ei.value.code == 204 and ei.value.location == "ORC^1^2"


@pytest.mark.parametrize("name,placer_status", [("epic_orm_o01_ca.hl7", "CANCELED"),
                                                 ("epic_orm_o01_dc.hl7", "DISCONTINUED")])
def test_cancel_after_the_exam_keeps_it_completed_and_records_the_placer_status(name, placer_status):
    orders.apply_order(cmds("epic_orm_o01_nw.hl7")[0])
    orders.apply_order(cmds("epic_orm_o01_xo_cm.hl7")[0])
    effect = orders.apply_order(cmds(name)[0])
    rp = RequestedProcedure.objects.get(accession_number="EA100001")
    assert rp.status == "COMPLETED" and effect["steps_changed"] == []
    assert ScheduledProcedureStep.objects.get(scheduled_procedure_step_id="SPS100001").status == "COMPLETED"
    assert rp.placer_status == placer_status and rp.placer_status_at is not None
    assert rp.placer_status_cause.startswith("HL7 ORM^O01 ") and rp.placer_status_cause.endswith(
        "EPC000102" if placer_status == "CANCELED" else "EPC000103")
    change = StatusChange.objects.get(entity="placer_status", object_id=rp.pk)
    assert (change.from_status, change.to_status, change.actor) == ("", placer_status, "EPIC")
    # The other procedure of the order was not named: no flag.
    assert RequestedProcedure.objects.get(accession_number="EA100002").placer_status == ""


def test_cancel_before_the_exam_cancels_and_records_the_placer_status():
    orders.apply_order(cmds("epic_orm_o01_nw.hl7")[0])
    orders.apply_order(cmds("epic_orm_o01_ca.hl7")[0])
    orders.apply_order(cmds("epic_orm_o01_ca.hl7", "EPC-CA-AGAIN")[0])  # a resend changes nothing more
    rp = RequestedProcedure.objects.get(accession_number="EA100001")
    assert (rp.status, rp.placer_status) == ("CANCELED", "CANCELED")
    assert rp.placer_status_cause.endswith("EPC000102")
    assert StatusChange.objects.filter(entity="placer_status", object_id=rp.pk).count() == 1


def test_new_order_twice_is_duplicate_key():
    from ris.errors import DuplicateKey

    orders.apply_order(cmds("epic_orm_o01_nw.hl7")[0])
    with pytest.raises(DuplicateKey):
        orders.apply_order(cmds("epic_orm_o01_nw.hl7", "OTHER-ID")[0])


def test_register_then_update_demographics_and_open_orders():
    patients.register_patient(cmds("cerner_adt_a04.hl7")[0])
    patient = Patient.objects.get(identifiers__id_number="C2000010")
    assert patient.patient_name == "Doe^Jane" and patient.visits.get().referring_physician_name == "Family^Frank"
    raw = fixture("smallvendor_orm_o01_nw_lf.hl7").replace(b"S3000003^^^SYNTHCLINIC", b"C2000010^^^SYNTHCMRN")
    raw = raw.replace(b"PID|||C2000010^^^SYNTHCMRN||Smith^John||19900101|M", b"PID|||C2000010^^^SYNTHCMRN|||||||||||||||CV88010")
    (order_cmd,) = map_message(parse(raw))
    orders.apply_order(order_cmd)
    order = Order.objects.get(placer_order_number="SV30001")
    assert order.patient_id == patient.pk and order.visit.visit_number == "CV88010"
    effect = patients.update_patient(cmds("cerner_adt_a08.hl7")[0])
    patient.refresh_from_db()
    order.refresh_from_db()
    assert (patient.patient_name, str(patient.patient_birth_date)) == ("Doe-Smith^Jane^Q", "1970-11-12")
    assert order.referring_physician_name == "Newdoc^Nina"
    assert effect["orders_updated"] == [order.pk] and effect["open_orders"] == [order.pk]


def test_merge_moves_orders_and_steps_and_is_recorded():
    # the retired patient E1000099 has an order; the survivor E1000001 exists
    raw = fixture("epic_orm_o01_nw.hl7").replace(b"E1000001^^^SYNTHMRN^MR~900-00-0001^^^SSA^SS", b"E1000099^^^SYNTHMRN^MR")
    orders.apply_order(map_message(parse(raw))[0])
    patients.register_patient(cmds("epic_adt_a01.hl7")[0])
    survivor_cmd = cmds("epic_adt_a40.hl7")[0]
    effect = patients.merge_patients(survivor_cmd)
    survivor = Patient.objects.get(identifiers__id_number="E1000001")
    order = Order.objects.get(placer_order_number="P10001")
    assert order.patient_id == survivor.pk
    merge = PatientMerge.objects.get()
    assert merge.survivor_id == survivor.pk and merge.retired_patient_id == "E1000099"
    assert merge.moved["ris.order"] == [order.pk]
    assert sorted(merge.moved["ris.scheduledprocedurestep"]) == sorted(
        ScheduledProcedureStep.objects.filter(requested_procedure__order=order).values_list("pk", flat=True))
    retired = Patient.objects.get(pk=effect["retired"])
    assert retired.merged_into_id == survivor.pk
    # the retired ID now resolves to the survivor
    assert PatientIdentifier.objects.get(id_number="E1000099").patient_id == survivor.pk


def test_merge_of_unknown_patient_is_unknown_key():
    from ris.errors import UnknownKey

    with pytest.raises(UnknownKey) as ei:
        patients.merge_patients(cmds("epic_adt_a40.hl7")[0])
    assert ei.value.location == "MRG^1^1"


# --- the store-and-apply step (one transaction) -------------------------------------------
def test_intake_stores_message_with_effect_and_ack():
    ack = ack_fields(handle_payload(fixture("epic_orm_o01_nw.hl7"), "127.0.0.1:1"))
    assert ack["msa_1"] == "AA" and ack["msa_2"] == "EPC000101"
    row = InboundMessage.objects.get()
    assert (row.status, row.ack_code, row.message_type, row.version_id) == ("APPLIED", "AA", "ORM^O01", "2.3.1")
    assert bytes(row.raw) == fixture("epic_orm_o01_nw.hl7") and row.patient_id == "E1000001"
    assert row.accession_numbers == "EA100001 EA100002" and row.effect["results"][0]["order"]
    assert ack_fields(bytes(row.ack))["msh_10"] == ack["msh_10"]


def test_intake_application_error_rolls_back_the_effect_but_keeps_the_message():
    ack = ack_fields(handle_payload(fixture("epic_orm_o01_ca.hl7")))
    assert ack["msa_1"] == "AE" and "204" in ack["err"] and "ORC^1^2" in ack["err"]
    row = InboundMessage.objects.get()
    assert (row.status, row.error_code, row.error_location) == ("ERROR", "204", "ORC^1^2")
    assert Patient.objects.count() == 0  # the PID of the failed message created nothing


def test_intake_duplicate_and_collision():
    first = handle_payload(fixture("omi_o23_nw.hl7"))
    again = handle_payload(fixture("omi_o23_nw.hl7"))
    assert again == first  # the stored ACK, byte for byte
    assert Order.objects.count() == 1 and InboundMessage.objects.get().duplicate_count == 1
    other = fixture("omi_o23_nw.hl7").replace(b"PETCT1", b"PETCT2")
    ack = ack_fields(handle_payload(other))
    assert ack["msa_1"] == "AE" and "205" in ack["err"]
    assert InboundMessage.objects.filter(status="COLLISION").count() == 1
    assert ScheduledProcedureStep.objects.filter(scheduled_station_ae_title="PETCT2").count() == 0


def test_intake_rejects_unsupported_and_garbage():
    ack = ack_fields(handle_payload(b"MSH|^~\\&|A|B|C|D|2025||ORU^R01|U1|P|2.5.1\rPID|1||1\r"))
    assert ack["msa_1"] == "AR" and "200" in ack["err"]
    ack = ack_fields(handle_payload(b"\x00\x01 this is not HL7"))
    assert ack["msa_1"] == "AR" and ack["msa_2"] == ""
    assert set(InboundMessage.objects.values_list("status", flat=True)) == {"REJECTED"}


# --- late cancels: a change of a cancelled order, a cancel of some procedures (HL7 v2.5.1 4.5.1) ---

SECOND_PROCEDURE = (b"EA100001|RP100001", b"EA100002|RP100002")


def send(name: str, control_id: str, *replacements: tuple[bytes, bytes]) -> dict:
    raw = with_control_id(fixture(name), control_id)
    for old, new in replacements:
        raw = raw.replace(old, new)
    return ack_fields(handle_payload(raw, "127.0.0.1:1"))


def _state(accession: str):
    rp = RequestedProcedure.objects.get(accession_number=accession)
    return (rp.status, rp.placer_status, rp.requested_procedure_description,
            sorted(rp.steps.values_list("status", flat=True)))


@pytest.mark.parametrize("exam_done", [True, False])
@pytest.mark.parametrize("control,word", [("epic_orm_o01_ca.hl7", "placer cancelled it (CA)"),
                                          ("epic_orm_o01_dc.hl7", "placer discontinued it (DC)")])
def test_a_change_of_a_procedure_the_placer_cancelled_is_refused_and_changes_nothing(exam_done, control, word):
    assert send("epic_orm_o01_nw.hl7", "L1")["msa_1"] == "AA"
    if exam_done:
        assert send("epic_orm_o01_xo_cm.hl7", "L2")["msa_1"] == "AA"
    assert send(control, "L3")["msa_1"] == "AA"
    before = _state("EA100001"), Patient.objects.get().patient_name
    for status in (b"|||CM", b"|||SC"):  # XO completed, XO scheduled
        ack = send("epic_orm_o01_xo_cm.hl7", f"L4{status[-2:].decode()}", (b"|||CM", status),
                   (b"CT Head without contrast", b"CT Head changed"), (b"Testpatient^Anna", b"Renamed^Anna"))
        assert ack["msa_1"] == "AE" and ack["err"].startswith("ERR|ORC^1^1^207&"), ack
        assert ack["msa_3"] == f"EA100001: {word}; XO refused, send a new order (NW)"
        assert (_state("EA100001"), Patient.objects.get().patient_name) == before  # the flag stays, nothing changed
    row = InboundMessage.objects.get(message_control_id="L4SC")
    assert (row.status, row.error_code, row.error_location) == ("ERROR", "207", "ORC^1^1")


def test_a_change_of_the_open_procedure_beside_a_cancelled_one_is_applied():
    send("epic_orm_o01_nw.hl7", "M1")
    send("epic_orm_o01_ca.hl7", "M2")  # EA100001 only
    ack = send("epic_orm_o01_xo_cm.hl7", "M3", SECOND_PROCEDURE, (b"|||CM", b"|||SC"),
               (b"CT Head without contrast", b"CT Chest changed"))
    assert ack["msa_1"] == "AA", ack
    assert _state("EA100002") == ("SCHEDULED", "", "CT Chest changed", ["SCHEDULED"])
    assert _state("EA100001")[:2] == ("CANCELED", "CANCELED")


def test_a_new_procedure_for_an_order_cancelled_as_a_whole_is_refused():
    send("epic_orm_o01_nw.hl7", "N1")
    ca_all = fixture("epic_orm_o01_ca.hl7").split(b"\rOBR")[0] + b"\r"  # no OBR: every procedure
    assert ack_fields(handle_payload(with_control_id(ca_all, "N2")))["msa_1"] == "AA"
    ack = send("epic_orm_o01_xo_cm.hl7", "N3", (b"|||CM", b"|||SC"), (b"EA100001|RP100001", b"EA100009|RP100009"))
    assert ack["msa_1"] == "AE" and "207" in ack["err"] and "placer cancelled it (CA)" in ack["msa_3"]
    assert not RequestedProcedure.objects.filter(accession_number="EA100009").exists()


def test_a_cancel_of_some_procedures_of_an_order_is_accepted_for_those_only():
    """A partial cancel (the CA names one procedure by OBR-18) is AA: that procedure is cancelled
    and flagged; the order's other procedure stays scheduled, without a flag."""
    send("epic_orm_o01_nw.hl7", "P1")
    ack = send("epic_orm_o01_ca.hl7", "P2", SECOND_PROCEDURE)
    assert ack["msa_1"] == "AA" and ack["err"] is None
    assert _state("EA100002")[:2] == ("CANCELED", "CANCELED")
    assert _state("EA100001") == ("SCHEDULED", "", "CT Head without contrast", ["SCHEDULED"])
    assert StatusChange.objects.filter(entity="placer_status").count() == 1


@pytest.mark.parametrize("second,error,location", [
    # a second ORC/OBR group naming a procedure the order does not have: unknown key
    (b"ORC|CA|P10001^EPIC|||CA\rOBR|2|P10001^EPIC||X||||||||||||||EA100009|RP100009", "204", "OBR^2^18"),
    # a second OBR under the same ORC: not the ORM^O01 structure, never dropped silently
    (b"OBR|2|P10001^EPIC||CTCHEST||||||||||||||EA100002|RP100002", "100", "OBR^2"),
])
def test_a_cancel_that_cannot_be_applied_whole_changes_nothing(second, error, location):
    send("epic_orm_o01_nw.hl7", "Q1")
    raw = with_control_id(fixture("epic_orm_o01_ca.hl7"), "Q2").rstrip(b"\r\n") + b"\r" + second + b"\r"
    ack = ack_fields(handle_payload(raw, "127.0.0.1:1"))
    assert ack["msa_1"] == "AE" and ack["err"].startswith(f"ERR|{location}^") and f"^{error}&" in ack["err"], ack
    for accession in ("EA100001", "EA100002"):
        assert _state(accession)[:2] == ("SCHEDULED", "")
    assert not StatusChange.objects.filter(entity="placer_status").exists()
