"""The operators' views: the inbound message log and the order in the Django admin."""

from __future__ import annotations

import pytest
from hl7.client import MLLPClient

from hl7gateway.intake import handle_payload
from hl7gateway.models import InboundMessage
from hl7gateway.server import MLLPServer
from ris.models import Order
from tests.support.hl7 import ack_fields, fixture, unframe


@pytest.mark.socket
@pytest.mark.django_db(transaction=True)
def test_order_sent_over_mllp_is_visible_in_admin(admin_client):
    server = MLLPServer("127.0.0.1", 0).start()
    try:
        with MLLPClient("127.0.0.1", server.port) as client:
            assert ack_fields(unframe(client.send_message(fixture("epic_orm_o01_nw.hl7"))))["msa_1"] == "AA"
    finally:
        server.stop()
    order = Order.objects.get(placer_order_number="P10001")
    page = admin_client.get(f"/admin/ris/order/{order.pk}/change/").content.decode()
    for text in ("EA100001", "EA100002", "SPS100001", "SPS100002", "Testpatient^Anna", "SCHEDULED"):
        assert text in page
    listing = admin_client.get("/admin/ris/order/?q=EA100002").content.decode()
    assert "P10001" in listing
    patient_page = admin_client.get(f"/admin/ris/patient/{order.patient_id}/change/").content.decode()
    assert "E1000001" in patient_page and "SYNTHMRN" in patient_page


@pytest.mark.django_db
@pytest.mark.parametrize("query", ["EPC000101", "EPIC", "E1000001", "EA100002", "ORM^O01", "APPLIED"])
def test_message_log_search(admin_client, settings, query):
    settings.HL7_SENDERS = "EPIC^SYNTH_HOSP@10.0.0.1,CERNER^SYNTH_MED_CTR@10.0.0.2"
    handle_payload(fixture("epic_orm_o01_nw.hl7"), "10.0.0.1:5000")
    handle_payload(fixture("cerner_adt_a04.hl7"), "10.0.0.2:5000")
    page = admin_client.get("/admin/hl7gateway/inboundmessage/", {"q": query}).content.decode()
    assert "EPC000101" in page
    if query not in ("APPLIED",):
        assert "CRN-A04-1" not in page


@pytest.mark.django_db
def test_message_log_shows_raw_and_ack_readable(admin_client):
    handle_payload(fixture("cerner_orm_o01_nw_crlf.hl7"))
    row = InboundMessage.objects.get()
    page = admin_client.get(f"/admin/hl7gateway/inboundmessage/{row.pk}/change/").content.decode()
    assert "Müller^Jürgen" in page  # decoded with MSH-18 8859/1
    assert "MSA|AA|CRN-77001" in page
    assert admin_client.get("/admin/hl7gateway/inboundmessage/add/").status_code == 403
