"""Logs without patient data: an HL7 order over MLLP and a C-STORE through the real code, the
study completed, and the output of the configured console handler (JSON lines, settings.LOGGING)
checked: no patient name ever, no accession number unless LOG_ACCESSION_NUMBERS."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import socket
import sys

import pytest
from django.utils import timezone

from hl7gateway.mllp import frame
from hl7gateway.server import MLLPServer
from pacs.models import Study
from pacs.services import completion
from project.logs import MASKED, REDACTED, JsonFormatter, PatientDataFilter
from tests.support.dicom import new_uid, port, pynetdicom_store
from tests.support.hl7 import ack_fields, fixture, recv_frame
from tests.support.orthanc import make_instance

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


# --- canaries: a recognizable synthetic patient through the sources that quote text -------------

CANARIES = ("ZZLOGSCAN", "CANARY-4711", "CANARY-ACC", "19010101")
CANARY_ORDER = (
    "MSH|^~\\&|CANARYEHR|CANARYHOSP|PACS|RADIOLOGY|20260301081500||ORM^O01|CANARYMSG{n}|P|2.3.1\r"
    "PID|1||CANARY-4711^^^CANARYHOSP^MR||{name}||19010101|M\r"
    "PV1|1|O\r"
    "ORC|NW|CANORD{n}|||SC||^^^20260302093000^^R\r"
    "OBR|1|CANORD{n}||CTHEAD^CT head^LOCAL||||||||||||||CANARY-ACC||||||CT\r"
)


def _no_canary(text: str) -> None:
    found = [c for c in CANARIES if c in text]
    assert not found, f"{found} logged:\n{text}"


def test_canary_patient_reaches_no_log_line(log_output, client, settings):
    """Orders over MLLP (one with bad escape sequences in PID-5, which python-hl7 logs with the
    field), a worklist search and a 404 with the name in the query string, a 500, Celery's task
    lines and a pydicom warning quoting a PN value: the JSON console output names none of them."""
    import warnings

    from django.contrib.auth.models import User
    from django.test import Client

    settings.LOG_ACCESSION_NUMBERS = False
    server = MLLPServer("127.0.0.1", 0).start()
    try:
        for n, name in enumerate(("ZZLOGSCAN^CANARY", "ZZLOGSCAN\\X4G\\^CANARY\\Q\\")):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
                s.sendall(frame(CANARY_ORDER.format(n=n, name=name).encode()))
                assert ack_fields(recv_frame(s))["msa_1"] in ("AA", "AE", "AR")
    finally:
        server.stop()
    user = User.objects.create_superuser("canary_admin", password="x-Canary-Pass-1")
    client.force_login(user)
    assert client.get("/", {"q": "ZZLOGSCAN"}).status_code in (200, 403)
    assert client.get("/no-such-page/", {"q": "ZZLOGSCAN", "pid": "CANARY-4711"}).status_code == 404
    broken = Client(raise_request_exception=False)
    broken.force_login(user)
    assert broken.get("/reading/studies/not-a-number/", {"q": "ZZLOGSCAN"}).status_code == 404
    logging.getLogger("celery.app.trace").info(
        "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s",
        {"name": "t", "id": "1", "runtime": 0.1, "return_value": "ZZLOGSCAN^CANARY", "args": ("CANARY-ACC",),
         "kwargs": {}})
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        ds = pydicom.Dataset()
        ds.PatientName = "ZZLOGSCAN^CANARY" + "X" * 70  # PN component longer than 64: pydicom warns
        ds.PatientBirthDate = "19010101x"
    logging.getLogger("django.server").info('"GET /?q=ZZLOGSCAN&id=CANARY-4711 HTTP/1.1" 200 5')
    output = log_output.getvalue()
    assert "Not Found" in output  # django.request logged the 404s, by path
    _no_canary(output)


@pytest.mark.django_db
def test_a_server_error_logs_the_path_but_no_query_and_no_local_value(log_output, settings):
    from django.test import Client
    from django.urls import path

    from project.access import public

    def broken(request):
        name = request.GET["q"] + "^CANARY"  # a local variable an error report would show (the page
        # also quotes the view's source lines: the canary is not written in them)
        raise RuntimeError(f"cannot read {len(name)} characters")

    module = type(sys)("canary_urls")
    module.urlpatterns = [path("broken/", public(broken))]
    sys.modules["canary_urls"] = module
    settings.ROOT_URLCONF = "canary_urls"
    settings.DEBUG = True  # the technical error page, which lists GET, POST, META and local variables
    response = Client(raise_request_exception=False).get("/broken/", {"q": "ZZLOGSCAN", "pid": "CANARY-4711"})
    assert response.status_code == 500
    _no_canary(response.content.decode())
    output = log_output.getvalue()
    assert "Internal Server Error: /broken/" in output
    _no_canary(output)
