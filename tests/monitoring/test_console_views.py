"""The operator's console (/monitoring/): every interface's figures from monitoring.selectors,
unmatched studies, failed transfers and deliveries, open and cleared alarms, inline SVG charts;
administrators only."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.utils import timezone

from hl7gateway.intake import handle_payload
from hl7gateway.models import OutboundDestination
from monitoring.console_views import sparkline
from monitoring.models import Alarm, AlarmRule, DicomOperation
from pacs.models import Study, Transfer, VnaDestination
from pacs.models import transfers as tr
from project.access import ADMINISTRATOR, RADIOLOGIST, TECHNOLOGIST
from tests.factories import user
from tests.support.hl7 import fixture, with_control_id

pytestmark = pytest.mark.django_db


def login(client, *roles):
    u = user(f"u{'-'.join(roles)}", *roles)
    client.force_login(u)
    return client


def test_refused_to_a_radiologist_and_a_technologist(client):
    assert login(client, RADIOLOGIST).get("/monitoring/").status_code == 403
    client.logout()
    assert login(client, TECHNOLOGIST).get("/monitoring/").status_code == 403


def test_anonymous_is_sent_to_the_login_page(client):
    response = client.get("/monitoring/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_console_shows_each_interface_kind_with_its_figures(client):
    now = timezone.now()
    # Inbound HL7: one applied order and one refused (AE) message from EPIC^SYNTH_HOSP.
    handle_payload(with_control_id(fixture("epic_orm_o01_nw.hl7"), "CON1"))
    handle_payload(with_control_id(fixture("epic_orm_o01_unknown_control.hl7"), "CON2"))
    # DICOM: C-STOREs and one failure from CT7.
    hour = now.replace(minute=0, second=0, microsecond=0)
    DicomOperation.objects.create(hour=hour, calling_ae_title="CT7", operation="C-STORE", status=0, count=12,
                                  last_at=now)
    DicomOperation.objects.create(hour=hour, calling_ae_title="CT7", operation="C-STORE", status=0xA700, count=2,
                                  last_at=now)
    # VNA: a failed transfer with its reason; ORU destination without traffic.
    vna = VnaDestination.objects.create(name="vna-main", kind=tr.KIND_DICOM, ae_title="VNA", host="127.0.0.1", port=1)
    study = Study.objects.create(study_instance_uid="2.25.777", accession_number="UNM1", calling_ae_title="CT7",
                                 last_received_at=now)
    Transfer.objects.create(study=study, destination=vna, batch=1, status=tr.FAILED, next_attempt_at=now,
                            reason="association rejected: called AE title not recognized", finished_at=now)
    OutboundDestination.objects.create(name="billing", host="127.0.0.1", port=9)
    # Alarms: one open, one cleared.
    rule = AlarmRule.objects.create(name="epic quiet", kind="inbound_silence", interface_key="EPIC^SYNTH_HOSP")
    Alarm.objects.create(rule=rule, interface_key="EPIC^SYNTH_HOSP", opened_at=now - dt.timedelta(hours=2),
                         message="no message for 61 min")
    Alarm.objects.create(rule=rule, interface_key="EPIC^SYNTH_HOSP", opened_at=now - dt.timedelta(hours=5),
                         cleared_at=now - dt.timedelta(hours=4), message="no message for 75 min")

    response = login(client, ADMINISTRATOR).get("/monitoring/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "base.html" in [t.name for t in response.templates]
    for section in ("iface-hl7_in", "iface-hl7_out", "iface-dicom", "iface-vna", "unmatched", "failed-transfers",
                    "failed-deliveries", "alarms"):
        assert f'id="{section}"' in html, section
    # Inbound sender row: 2 messages in 24 h, 1 error (AE), ACK codes shown.
    row = re.search(r'data-key="EPIC\^SYNTH_HOSP">(.*?)</tr>', html, re.S).group(1)
    assert "<svg" in row and "2 in all" in row
    assert '<td class="bad">1</td>' in row and "AA 1" in row and "AE 1" in row
    dicom = re.search(r'data-key="CT7">(.*?)</tr>', html, re.S).group(1)
    assert "14 in all" in dicom and '<td class="bad">2</td>' in dicom and "C-STORE 0xA700: 2" in dicom
    assert 'data-key="billing"' in html and 'data-key="vna-main"' in html
    assert "association rejected: called AE title not recognized" in html
    assert "UNM1" in html  # unmatched study with its age
    assert html.count('class="alarm-open"') == 1 and html.count('class="alarm-cleared"') == 1
    assert "no message for 61 min" in html
    assert "1 inbound message(s) answered with an error" in html
    assert "Testpatient" not in html  # no patient names on the console


def test_sparkline_scales_bars_and_escapes_nothing_unsafe():
    svg = sparkline([0, 5, 10])
    assert svg.startswith("<svg") and svg.count("<rect") == 3
    heights = [float(h) for h in re.findall(r'height="([0-9.]+)" fill=', svg)]
    assert heights[0] == 0 and heights[2] == pytest.approx(26.0) and heights[1] == pytest.approx(13.0)
    assert "15 in all" in svg and "10 (0 h ago)" in svg
