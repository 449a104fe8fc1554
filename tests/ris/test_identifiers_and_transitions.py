"""Accession numbers from the database sequence, Study UIDs, the SPS transition table."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime

import pytest
from django.db import connection, connections

from ris import states
from ris.errors import InvalidTransition
from ris.models import Order, Patient, RequestedProcedure, ScheduledProcedureStep, StatusChange
from ris.services.identifiers import new_accession_number, new_study_instance_uid
from ris.services.transitions import history, transition


def test_study_instance_uid_is_a_valid_2_25_uid():
    uid = new_study_instance_uid()
    assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", uid)
    assert len(uid) <= 64
    assert uid != new_study_instance_uid()


@pytest.mark.django_db
def test_accession_numbers_come_from_the_postgresql_sequence(settings):
    assert connection.vendor == "postgresql"
    settings.ACCESSION_NUMBER_FORMAT = "T{n:06d}"
    first, second = new_accession_number(), new_accession_number()
    assert re.fullmatch(r"T\d{6}", first)
    assert int(second[1:]) == int(first[1:]) + 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_allocations_never_share_a_number():
    results: list[str] = []
    lock = threading.Lock()

    def allocate():
        try:
            for _ in range(25):
                number = new_accession_number()
                with lock:
                    results.append(number)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=allocate) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 200
    assert len(set(results)) == 200


def _step() -> ScheduledProcedureStep:
    patient = Patient.objects.create(patient_name="TEST^ONE")
    order = Order.objects.create(patient=patient, placer_order_number="P1")
    rp = RequestedProcedure.objects.create(
        order=order, requested_procedure_id="RP1", study_instance_uid=new_study_instance_uid(),
        accession_number=new_accession_number(),
    )
    return ScheduledProcedureStep.objects.create(
        requested_procedure=rp, scheduled_procedure_step_id="SPS1", modality="CT",
        scheduled_start=datetime(2026, 1, 1, 8, 0, tzinfo=UTC),
    )


@pytest.mark.django_db
def test_transition_records_from_to_cause_and_actor():
    step = _step()
    assert transition(step, states.SPS_STARTED, entity="sps", cause="MPPS N-CREATE", actor="CT1")
    assert transition(step, states.SPS_COMPLETED, entity="sps", cause="MPPS N-SET", actor="CT1")
    step.refresh_from_db()
    assert step.status == states.SPS_COMPLETED
    rows = list(history("sps", step.pk).values_list("from_status", "to_status", "cause", "actor"))
    assert rows == [
        ("SCHEDULED", "STARTED", "MPPS N-CREATE", "CT1"),
        ("STARTED", "COMPLETED", "MPPS N-SET", "CT1"),
    ]


@pytest.mark.django_db
def test_same_status_is_a_no_op_and_forbidden_pairs_raise():
    step = _step()
    assert transition(step, states.SPS_SCHEDULED, entity="sps", cause="again") is False
    transition(step, states.SPS_CANCELED, entity="sps", cause="CA")
    with pytest.raises(InvalidTransition):
        transition(step, states.SPS_STARTED, entity="sps", cause="late MPPS")
    step.refresh_from_db()
    assert step.status == states.SPS_CANCELED
    assert StatusChange.objects.filter(object_id=step.pk).count() == 1


@pytest.mark.parametrize("final", sorted(states.SPS_FINAL))
def test_no_transition_leaves_a_final_step_status(final):
    assert not [pair for pair in states.SPS_TRANSITIONS if pair[0] == final]


def test_every_order_control_mapping_lands_on_a_known_status():
    assert set(states.ORDER_CONTROL_TO_SPS_STATUS.values()) <= set(states.SPS_STATUSES)
