"""The one failure status every DIMSE SCP handler answers (pacs.dimse.status, PS3.7 C.4), as it
goes on the wire: the command elements the acceptor encodes, decoded back."""

from __future__ import annotations

from pacs.dimse import mpps, mwl, qr, status, ul
from pacs.services.mpps import INVALID_ATTRIBUTE_VALUE, MAY_NO_LONGER_BE_UPDATED, PROCESSING_FAILURE, MppsRefused


def _on_the_wire(answer) -> ul.Command:
    elements = {
        "CommandField": 0x8020,
        "MessageIDBeingRespondedTo": 1,
        "CommandDataSetType": ul.NO_DATA_SET,
        **ul.status_elements(answer),
    }
    return ul.decode_command(ul.encode_command(elements))


def test_failure_cuts_error_comment_to_lo_length():
    decoded = _on_the_wire(status.failure(status.UNABLE_TO_PROCESS, "x" * 100))
    assert decoded.Status == 0xC000
    assert decoded.ErrorComment == "x" * 64


def test_failure_carries_error_id_and_offending_attributes_known_to_the_dictionary():
    answer = status.failure(
        PROCESSING_FAILURE,
        "may no longer be updated",
        error_id=MAY_NO_LONGER_BE_UPDATED,
        offending=["PerformedProcedureStepStartDate", "NoSuchKeyword"],
    )
    decoded = _on_the_wire(answer)
    assert decoded.Status == 0x0110 and decoded.ErrorID == 0xA710
    assert decoded.AttributeIdentifierList == [0x00400244]


def test_failure_without_extras_has_only_status_and_comment():
    answer = status.failure(status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "bad key")
    assert {elem.keyword for elem in answer} == {"Status", "ErrorComment"}


def test_every_scp_answers_failures_through_the_one_builder():
    assert qr._failure is status.failure and mwl._failure is status.failure
    refused = MppsRefused(INVALID_ATTRIBUTE_VALUE, "bad date", offending=["PerformedProcedureStepStartDate"])
    assert mpps._status(refused) == status.failure(0x0106, "bad date", offending=["PerformedProcedureStepStartDate"])
    assert qr.SUCCESS == mwl.SUCCESS == mpps.SUCCESS == 0x0000
