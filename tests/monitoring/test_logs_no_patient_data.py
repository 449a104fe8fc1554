"""Logs without patient data: an HL7 order over MLLP and a C-STORE through the real code, the
study completed, and the output of the configured console handler (JSON lines, settings.LOGGING)
checked: no patient name ever, no accession number unless LOG_ACCESSION_NUMBERS."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import socket

import pytest
from django.utils import timezone

from hl7gateway.mllp import frame
from hl7gateway.server import MLLPServer
from pacs.logs import MASKED, REDACTED, JsonFormatter, PatientDataFilter
from pacs.models import Study
from pacs.services import completion
from tests.hl7gateway.intake_helpers import ack_fields, fixture, recv_frame
from tests.pacs.imaging_helpers import engine, new_uid, port, pynetdicom_store, store_dir  # noqa: F401
from tests.pacs.orthanc import make_instance

pytestmark = pytest.mark.django_db(transaction=True)

ACCESSION = "EA100001"  # OBR-18 of the fixture's first procedure
NAMES = ("Testpatient", "TESTPATIENT", "Anna")


@pytest.fixture
def log_output():
    """The console handler configured by settings.LOGGING, writing into a buffer for the test."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter)]
    assert handlers, "the JSON console handler of settings.LOGGING is not installed"
    handler = handlers[0]
    assert any(isinstance(f, PatientDataFilter) for f in handler.filters)
    buffer = io.StringIO()
    old = handler.setStream(buffer)
    try:
        yield buffer
    finally:
        handler.setStream(old)


def drive_order_and_images(engine) -> Study:  # noqa: F811 - pytest fixture passed in
    server = MLLPServer("127.0.0.1", 0).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(frame(fixture("epic_orm_o01_nw.hl7")))
            assert ack_fields(recv_frame(s))["msa_1"] == "AA"
    finally:
        server.stop()
    ds = make_instance(study_instance_uid=new_uid(), accession_number=ACCESSION, patient_id="E1000001",
                       issuer_of_patient_id="SYNTHMRN", patient_name="Testpatient^Anna^Maria")
    assert pynetdicom_store(port(engine), [ds]) == [0x0000]
    study = Study.objects.get(study_instance_uid=ds.StudyInstanceUID)
    assert study.requested_procedure_id is not None  # matched to the order by its accession number
    assert completion.check_study(study.pk, now=timezone.now() + dt.timedelta(minutes=5))
    return study


def lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(x) for x in buffer.getvalue().splitlines() if x.strip()]


def test_no_patient_name_and_no_accession_number_by_default(engine, log_output, settings):  # noqa: F811
    settings.LOG_ACCESSION_NUMBERS = False
    study = drive_order_and_images(engine)
    output = log_output.getvalue()
    records = lines(log_output)
    assert any(r["msg"] == "connection opened" for r in records)  # the MLLP listener logged
    complete = [r for r in records if r["msg"] == "study complete"]
    assert complete and complete[0]["study_id"] == study.pk and complete[0]["accession_number"] == MASKED
    for name in NAMES:
        assert name not in output
    assert ACCESSION not in output


def test_accession_numbers_logged_when_the_setting_allows(engine, log_output, settings):  # noqa: F811
    settings.LOG_ACCESSION_NUMBERS = True
    drive_order_and_images(engine)
    output = log_output.getvalue()
    complete = [r for r in lines(log_output) if r["msg"] == "study complete"]
    assert complete and complete[0]["accession_number"] == ACCESSION
    for name in NAMES:
        assert name not in output


def test_filter_redacts_patient_extras_and_masks_accessions_in_the_message(log_output, settings):
    settings.LOG_ACCESSION_NUMBERS = False
    log = logging.getLogger("tests.monitoring.logs")
    log.warning("no order for %s", "ACC123", extra={"accession_number": "ACC123", "patient_name": "DOE^JANE",
                                                   "error": 'duplicate key DETAIL:  Key (x)=(DOE^JANE) exists'})
    log.warning("several", extra={"accession_numbers": "ACC1,ACC2"})
    first, second = lines(log_output)[-2:]
    assert first["msg"] == f"no order for {MASKED}" and first["accession_number"] == MASKED
    assert first["patient_name"] == REDACTED and first["error"] == "duplicate key"
    assert second["accession_numbers"] == MASKED
    assert "DOE" not in log_output.getvalue() and "ACC1" not in log_output.getvalue()
    assert settings.LOGGING["handlers"]["console"]["filters"] == ["patient_data"]


def test_database_error_details_are_cut_from_tracebacks(log_output):
    log = logging.getLogger("tests.monitoring.logs")
    message = 'duplicate key value violates unique constraint "x"\nDETAIL:  Key (patient_name)=(DOE^JANE) exists.'
    try:
        raise ValueError(message)  # the traceback shows this line, not the message's source
    except ValueError:
        log.exception("insert failed")
    record = lines(log_output)[-1]
    assert "duplicate key value" in record["exc"] and "DOE" not in record["exc"]
