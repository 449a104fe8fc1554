"""The operator's console in headless Chromium: an administrator sees every interface with its
chart, follows an accession to its journey and reprocesses a failed message with a reason;
a radiologist is refused (403)."""

from __future__ import annotations

import pytest

from hl7gateway.intake import handle_payload
from hl7gateway.models import InboundMessage
from monitoring.records import ReplayRecord
from project.access import ADMINISTRATOR, RADIOLOGIST
from tests.factories import reading as f
from tests.support.browser import login
from tests.support.hl7 import fixture, with_control_id

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_administrator_sees_the_console_follows_a_journey_and_replays(live_server, new_page):
    handle_payload(with_control_id(fixture("epic_orm_o01_ca.hl7"), "E2E-CA"))  # before its order: AE
    handle_payload(with_control_id(fixture("epic_orm_o01_nw.hl7"), "E2E-NW"))
    f.user("olga", ADMINISTRATOR)
    page = new_page()
    login(page, live_server, "olga")
    response = page.goto(f"{live_server.url}/monitoring/")
    assert response.status == 200
    assert page.locator("h1").inner_text() == "Operator's console"
    row = page.locator('#iface-hl7_in tr.iface[data-key="EPIC^SYNTH_HOSP"]')
    assert row.count() == 1
    assert row.locator("svg.spark rect").count() == 24  # one bar per hour, drawn by the server
    assert "2 in all" in row.locator("svg.spark").get_attribute("aria-label")
    assert page.locator("#iface-hl7_in tr.iface td.bad").first.inner_text() == "1"

    page.fill("input[name=accession]", "EA100001")
    page.click("text=Show")
    page.wait_for_url("**/monitoring/journey/?accession=EA100001")
    steps = page.locator('section.journey[data-accession="EA100001"] tr.step')
    assert steps.count() >= 3
    assert "ORM^O01 received" in steps.first.inner_text()

    page.goto(f"{live_server.url}/monitoring/replays/")
    original = InboundMessage.objects.get(message_control_id="E2E-CA")
    form_row = page.locator(f'tr.inbound[data-id="{original.pk}"]')
    form_row.locator("input[name=reason]").fill("order arrived after its cancel")
    form_row.locator("button").click()
    page.wait_for_selector("tr.record")
    assert "Replayed (inbound HL7 reprocessed): APPLIED, ACK AA" in page.locator("ul.messages").inner_text()
    record = ReplayRecord.objects.get()
    assert record.username == "olga" and record.reason == "order arrived after its cancel"
    assert InboundMessage.objects.get(pk=original.pk).status == "ERROR"  # the original is unchanged


def test_radiologist_is_refused(live_server, new_page):
    f.user("rita", RADIOLOGIST)
    page = new_page()
    login(page, live_server, "rita")
    for url in ("/monitoring/", "/monitoring/journey/?accession=X", "/monitoring/replays/"):
        response = page.goto(f"{live_server.url}{url}")
        assert response.status == 403, url
        assert "Operator's console" not in page.content()
