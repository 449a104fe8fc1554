"""The reading worklist follows HL7 patient updates: an A08 rename and an A40 merge arriving
through the real intake (store, apply, ACK) change the rows already on the list."""

from __future__ import annotations

import pytest

from hl7gateway.intake import handle_payload
from ris.models import RequestedProcedure
from tests.support.hl7 import ack_fields, fixture
from worklist.models import ReadingItem
from worklist.services import mark_ready_for_reading

pytestmark = pytest.mark.django_db


def _accept(raw: bytes) -> None:
    ack = ack_fields(handle_payload(raw))
    assert ack["msa_1"] == "AA", ack


def test_a08_renames_the_patient_on_the_reading_worklist():
    _accept(fixture("cerner_adt_a04.hl7"))
    raw = fixture("smallvendor_orm_o01_nw_lf.hl7").replace(b"S3000003^^^SYNTHCLINIC", b"C2000010^^^SYNTHCMRN")
    _accept(raw)
    rp = RequestedProcedure.objects.get(order__placer_order_number="SV30001")
    mark_ready_for_reading(rp.pk)
    assert ReadingItem.objects.get(requested_procedure=rp).patient_name != "Doe-Smith^Jane^Q"

    _accept(fixture("cerner_adt_a08.hl7"))

    assert ReadingItem.objects.get(requested_procedure=rp).patient_name == "Doe-Smith^Jane^Q"


def test_a40_moves_the_study_to_the_surviving_patient_id():
    raw = fixture("epic_orm_o01_nw.hl7").replace(b"E1000001^^^SYNTHMRN^MR~900-00-0001^^^SSA^SS", b"E1000099^^^SYNTHMRN^MR")
    _accept(raw)
    _accept(fixture("epic_adt_a01.hl7"))
    rps = list(RequestedProcedure.objects.filter(order__placer_order_number="P10001"))
    for rp in rps:
        mark_ready_for_reading(rp.pk)
    assert set(ReadingItem.objects.values_list("patient_id", flat=True)) == {"E1000099"}

    _accept(fixture("epic_adt_a40.hl7"))

    assert set(ReadingItem.objects.values_list("patient_id", flat=True)) == {"E1000001"}
    assert ReadingItem.objects.count() == len(rps) == 2
