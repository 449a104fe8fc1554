"""/metrics scraped over HTTP from the live server and parsed with prometheus_client's
parser: figures computed from the database at scrape time (HL7 in through the real intake,
DICOM operations through the real AE with dcmtk and pynetdicom, alarm states); who may scrape."""

from __future__ import annotations

import datetime as dt
import subprocess
import urllib.error
import urllib.request

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from hl7gateway.intake import handle_payload
from monitoring import services
from monitoring.models import INBOUND_SILENCE, OUTBOUND_BACKLOG, DicomOperation
from pacs.dimse import db
from tests.factories import backdate_inbound as backdate
from tests.factories import oru as h
from tests.factories import rule
from tests.support.dicom import new_uid, port, pynetdicom_store
from tests.support.hl7 import SENDER, unsupported
from tests.support.hl7 import new_order as order
from tests.support.net import dcmtk_tool
from tests.support.orthanc import make_instance

pytestmark = pytest.mark.django_db(transaction=True)


def scrape(live_server, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"{live_server.url}/metrics", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_from_the_database_parsed(live_server, engine, settings):  # noqa: F811 - pytest fixture
    # HL7 in: 2 AA + 1 AR from EPIC^SYNTH_HOSP through the real intake.
    handle_payload(order("M1"))
    handle_payload(order("M2"))
    handle_payload(unsupported("M3"))
    # DICOM: a C-ECHO from dcmtk (CT1), one stored instance and one refused from pynetdicom (MODALITY): the
    # same SOP Instance UID with other content under STORE_OVERWRITE_POLICY=reject (0xC001).
    settings.STORE_OVERWRITE_POLICY = "reject"
    echo = subprocess.run([dcmtk_tool("echoscu"), "-aet", "CT1", "-aec", "PACS", "127.0.0.1", str(port(engine))],
                          capture_output=True, timeout=30)
    assert echo.returncode == 0
    good = make_instance(study_instance_uid=new_uid(), accession_number="ACCMETRICS1", patient_name="SECRET^NAME")
    clash = make_instance(study_instance_uid=new_uid(), sop_instance_uid=good.SOPInstanceUID)
    assert pynetdicom_store(port(engine), [good]) == [0x0000]
    assert pynetdicom_store(port(engine), [clash]) == [0xC001]
    # ORU backlog for one destination nobody listens on, and an alarm on it.
    dest = h.destination("billing", 9)
    h.sign_report(h.study(), h.radiologist())
    rule(OUTBOUND_BACKLOG, "billing", minutes=0)
    rule(INBOUND_SILENCE, SENDER, minutes=60)
    backdate(5)
    assert services.evaluate(timezone.now() + dt.timedelta(minutes=1))["opened"] == 1  # the sender is not quiet
    db.flush()  # DICOM counters are written by a DIMSE database thread within half a second of the answer

    status, text = scrape(live_server)
    assert status == 200
    m = samples(text)
    assert m[("pacs_hl7_inbound_messages_total", (("ack_code", "AA"), ("sender", SENDER)))] == 2
    assert m[("pacs_hl7_inbound_messages_total", (("ack_code", "AR"), ("sender", SENDER)))] == 1
    assert m[("pacs_hl7_inbound_last_message_timestamp_seconds", (("sender", SENDER),))] > 0
    assert m[("pacs_dicom_operations_total",
              (("calling_ae_title", "CT1"), ("operation", "C-ECHO"), ("status", "0x0000")))] == 1
    assert m[("pacs_dicom_operations_total",
              (("calling_ae_title", "MODALITY"), ("operation", "C-STORE"), ("status", "0x0000")))] == 1
    assert m[("pacs_dicom_operations_total",
              (("calling_ae_title", "MODALITY"), ("operation", "C-STORE"), ("status", "0xC001")))] == 1
    assert m[("pacs_hl7_outbound_messages_total", (("destination", "billing"), ("status", "PENDING")))] == 1
    assert m[("pacs_queue_depth", (("destination", "billing"), ("interface", "hl7_out")))] == 1
    assert m[("pacs_queue_oldest_age_seconds", (("destination", "billing"), ("interface", "hl7_out")))] >= 0
    assert m[("pacs_unmatched_studies", ())] == 1
    assert m[("pacs_unmatched_study_oldest_age_seconds", ())] >= 0
    assert m[("pacs_alarm_open", (("interface", "billing"), ("kind", OUTBOUND_BACKLOG),
                                  ("rule", f"{OUTBOUND_BACKLOG} billing")))] == 1
    assert m[("pacs_alarm_rule_open_alarms", (("kind", INBOUND_SILENCE), ("rule", f"{INBOUND_SILENCE} {SENDER}")))] == 0
    # No patient data: names, patient IDs, accession numbers of what went through.
    for secret in ("Testpatient", "SECRET", "ACCMETRICS1", "E1000001", "TESTPERSON"):
        assert secret not in text
    assert dest.pk and DicomOperation.objects.filter(calling_ae_title="MODALITY").count() == 2

    # Right across processes: a change written now is in the next scrape (no cached counters).
    handle_payload(order("M4"))
    assert samples(scrape(live_server)[1])[
        ("pacs_hl7_inbound_messages_total", (("ack_code", "AA"), ("sender", SENDER)))] == 3


def test_scrape_refused_outside_the_allowed_addresses_unless_bearer_token(live_server, settings):
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8"]
    settings.METRICS_BEARER_TOKEN = ""
    assert scrape(live_server)[0] == 403
    settings.METRICS_BEARER_TOKEN = "s3cret-token-for-tests"
    assert scrape(live_server, {"Authorization": "Bearer wrong"})[0] == 403
    status, text = scrape(live_server, {"Authorization": "Bearer s3cret-token-for-tests"})
    assert status == 200 and "pacs_unmatched_studies" in text
    settings.METRICS_ALLOWED_IPS = ["127.0.0.0/8"]
    settings.METRICS_BEARER_TOKEN = ""
    assert scrape(live_server)[0] == 200


def test_a_bad_allowed_address_is_reported_by_the_system_checks(settings):
    from django.core.checks import run_checks

    settings.METRICS_ALLOWED_IPS = ["127.0.0.1", "not-an-address", "10.0.0.0/8"]
    errors = [e for e in run_checks() if e.id == "monitoring.E001"]
    assert len(errors) == 1 and "not-an-address" in errors[0].msg
    settings.METRICS_ALLOWED_IPS = ["127.0.0.1"]
    assert not [e for e in run_checks() if e.id == "monitoring.E001"]
