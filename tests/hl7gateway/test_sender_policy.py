"""Declared HL7 senders: MSH-3/MSH-4 and the connection's source address decide what is applied.

"Another host" is another loopback address: the listener is bound to 127.0.0.1 and the client
socket to 127.0.0.2 or 127.0.0.3 (Linux routes all of 127.0.0.0/8 to lo).  The out-of-the-box
policy admits undeclared senders from 127.0.0.1 and ::1 only.
"""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from hl7gateway import senders
from hl7gateway.models import DeclaredSender, InboundMessage, InboundRefusal
from hl7gateway.server import MLLPServer
from ris.models import Order, PatientIdentifier
from tests.support.hl7 import ack_fields, connect, exchange, fixture, recv_frame, with_control_id

pytestmark = [pytest.mark.socket, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def server():
    srv = MLLPServer("127.0.0.1", 0).start()
    yield srv
    srv.stop()


def order(control_id: str, placer: str = "P10001") -> bytes:
    return with_control_id(fixture("epic_orm_o01_nw.hl7"), control_id).replace(b"P10001^", placer.encode() + b"^")


def send(port: int, source: str, raw: bytes) -> dict:
    with connect(port, source) as sock:
        return ack_fields(exchange(sock, raw))


@pytest.mark.parametrize("value, expected", [
    ("EPIC^HOSP@10.1.2.7", [("EPIC", "HOSP", "10.1.2.7", {"orders", "patients", "merges"})]),
    ("EPIC^HOSP@10.1.2.0/24:orders+patients+merges, LAB@10.9.0.1:orders",
     [("EPIC", "HOSP", "10.1.2.0/24", {"orders", "patients", "merges"}), ("LAB", "", "10.9.0.1", {"orders"})]),
    ("EHR^H@[2001:db8::/64]:merges", [("EHR", "H", "2001:db8::/64", {"merges"})]),
    ("", []),
])
def test_hl7_senders_forms(value, expected):
    specs = senders.parse_senders(value)
    assert [(s.sending_application, s.sending_facility, s.address, set(s.grants)) for s in specs] == expected


@pytest.mark.parametrize("value", ["EPIC^HOSP", "EPIC^HOSP@10.1.2.300", "EPIC^HOSP@10.1.2.7:billing",
                                   "^HOSP@10.1.2.7", "EPIC^HOSP@[2001:db8::/64", "EPIC^HOSP@2001:db8::1:orders"])
def test_hl7_senders_bad_forms_are_refused(value):
    with pytest.raises(ValueError):
        senders.parse_senders(value)


def test_undeclared_sender_admitted_from_loopback_refused_from_another_address(server):
    assert send(server.port, "127.0.0.1", order("U-1"))["msa_1"] == "AA"
    ack = send(server.port, "127.0.0.2", order("U-2", "P20002"))
    assert ack["msa_1"] == "AR" and ack["msa_2"] == "U-2"
    assert "MSH^1^3^103&Table value not found&HL70357" in ack["err"]  # v2.3.1 ERR-1
    assert ack["msa_3"] == "MSH-3/MSH-4 EPIC/SYNTH_HOSP is not a declared sender for address 127.0.0.2"
    assert Order.objects.filter(placer_order_number="P20002").count() == 0
    refused = InboundMessage.objects.get(message_control_id="U-2")
    assert (refused.status, refused.ack_code, refused.error_code) == ("REFUSED", "AR", "103")
    assert refused.peer.startswith("127.0.0.2:")
    tally = InboundRefusal.objects.get()
    assert (tally.source_address, tally.refused_count, tally.last_message_type) == ("127.0.0.2", 1, "ORM^O01")


def test_declared_senders_get_only_their_kinds_from_their_addresses(server, settings):
    # One from the environment, one from the admin: the same table, the same lookup.
    settings.HL7_SENDERS = "EPIC^SYNTH_HOSP@127.0.0.2:orders+patients"
    DeclaredSender.objects.create(sending_application="CERNER", sending_facility="SYNTH_MED_CTR",
                                  address="127.0.0.3/32", may_send_patients=True)
    a01 = fixture("epic_adt_a01.hl7")
    retired = a01.replace(b"E1000020", b"E1000099").replace(b"EPC-A01-1", b"EPC-A01-2")
    survivor = a01.replace(b"E1000020", b"E1000001").replace(b"EPC-A01-1", b"EPC-A01-3")
    for raw in (retired, survivor):
        assert send(server.port, "127.0.0.2", raw)["msa_1"] == "AA"
    assert send(server.port, "127.0.0.2", order("D-1"))["msa_1"] == "AA"

    merge = send(server.port, "127.0.0.2", fixture("epic_adt_a40.hl7"))
    assert merge["msa_1"] == "AR" and "|201^Unsupported event code^HL70357|" in merge["err"]
    assert "|201^Unsupported event code^HL70357|E||||merges (ADT\\S\\A40) not granted to EPIC/SYNTH_HOSP, which " \
           "may send orders, patients" in merge["err"]  # v2.5.1 ERR-3 and ERR-8
    # The merge did not happen: both patients keep their own identity.
    assert PatientIdentifier.objects.get(id_number="E1000099").patient_id != \
        PatientIdentifier.objects.get(id_number="E1000001").patient_id

    # The declared EPIC from an address not declared for it; the CERNER sender with an order.
    elsewhere = send(server.port, "127.0.0.3", order("D-2", "P30003"))
    assert elsewhere["msa_1"] == "AR" and "not a declared sender for address 127.0.0.3" in elsewhere["msa_3"]
    cerner = send(server.port, "127.0.0.3", fixture("cerner_orm_o01_nw_crlf.hl7"))
    assert cerner["msa_1"] == "AR" and "200&Unsupported message type" in cerner["err"]
    assert send(server.port, "127.0.0.3", fixture("cerner_adt_a04.hl7"))["msa_1"] == "AA"
    # A declared sender from loopback is still held to its declaration.
    assert "not a declared sender for address 127.0.0.1" in send(server.port, "127.0.0.1", order("D-3", "P40004"))["msa_3"]
    assert Order.objects.filter(placer_order_number__in=["P30003", "P40004"]).count() == 0
    assert InboundMessage.objects.filter(status="REFUSED").count() == 4


def test_refused_flood_from_one_address_is_summarized(server, settings):
    settings.HL7_REFUSED_LOG_LIMIT = 5
    with connect(server.port, "127.0.0.2") as sock:
        for i in range(60):
            assert ack_fields(exchange(sock, order(f"F-{i}", f"PF{i}")))["msa_1"] == "AR"
    assert InboundMessage.objects.filter(status="REFUSED").count() == 5
    tally = InboundRefusal.objects.get(source_address="127.0.0.2")
    assert tally.refused_count == 60 and tally.last_reason.startswith("MSH-3/MSH-4 EPIC/SYNTH_HOSP")
    assert Order.objects.count() == 0


def test_refused_message_is_applied_when_resent_after_declaring_its_sender(server, settings):
    raw = order("R-1")
    assert send(server.port, "127.0.0.2", raw)["msa_1"] == "AR"
    DeclaredSender.objects.create(sending_application="EPIC", sending_facility="SYNTH_HOSP", address="127.0.0.2",
                                  may_send_orders=True)
    senders.reset()  # as HL7_SENDERS_REFRESH_SECONDS passing would
    assert send(server.port, "127.0.0.2", raw)["msa_1"] == "AA"
    assert Order.objects.filter(placer_order_number="P10001").count() == 1


def test_no_sender_setting_admits_unknown_senders_from_nowhere(server, settings):
    settings.HL7_UNDECLARED_SENDERS_FROM = []
    assert send(server.port, "127.0.0.1", order("N-1"))["msa_1"] == "AR"


def test_admin_changes_are_seen_after_the_refresh_interval(settings, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(senders.time, "monotonic", lambda: clock[0])
    settings.HL7_SENDERS_REFRESH_SECONDS = 10.0
    msh = senders.MSH(msh_3="LAB", msh_4="H", msh_9="ORM^O01")
    assert senders.check(msh, "10.5.0.1:2000").code == 103
    DeclaredSender.objects.create(sending_application="LAB", sending_facility="H", address="10.5.0.0/16",
                                  may_send_orders=True)
    clock[0] += 9.0
    assert senders.check(msh, "10.5.0.1:2000") is not None  # the copy in the process is still used
    clock[0] += 2.0
    assert senders.check(msh, "10.5.0.1:2000") is None
    assert senders.check(msh, "::ffff:10.5.0.1:2000") is None  # IPv4-mapped, as a dual-stack listener sees it


def test_the_check_costs_no_query_between_refreshes(settings):
    settings.HL7_SENDERS = "EPIC^SYNTH_HOSP@10.1.2.0/24:orders"
    msh = senders.MSH(msh_3="EPIC", msh_4="SYNTH_HOSP", msh_9="ORM^O01")
    assert senders.check(msh, "10.1.2.7:4000") is None
    with CaptureQueriesContext(connection) as queries:
        for i in range(1000):
            assert senders.check(msh, f"10.1.2.{i % 250}:4000") is None
    assert len(queries) == 0


def test_environment_senders_no_longer_declared_are_disabled(settings):
    assert senders.sync_environment_senders("EPIC^HOSP@10.1.2.7:orders,LAB^HOSP@10.1.2.8") == 2
    assert senders.sync_environment_senders("EPIC^HOSP@10.1.2.7:orders+merges") == 1
    epic = DeclaredSender.objects.get(sending_application="EPIC")
    assert epic.grants == {"orders", "merges"} and epic.enabled and epic.declared_in_environment
    lab = DeclaredSender.objects.get(sending_application="LAB")
    assert not lab.enabled and not lab.declared_in_environment


def test_check_deploy_errors_while_undeclared_senders_are_admitted_from_everywhere(settings):
    settings.HL7_UNDECLARED_SENDERS_FROM = ["0.0.0.0/0", "::/0"]
    with pytest.raises(SystemCheckError, match=r"hl7gateway\.E103"):
        call_command("check", "--deploy", "--tag", "security")
    settings.HL7_UNDECLARED_SENDERS_FROM = ["127.0.0.1", "::1"]
    call_command("check", "--deploy", "--tag", "security", "--fail-level", "ERROR")


@pytest.mark.parametrize("name, value", [("HL7_SENDERS", "EPIC^HOSP@10.1.2.7:billing"),
                                         ("HL7_UNDECLARED_SENDERS_FROM", ["127.0.0.1", "localhost"])])
def test_check_names_a_sender_setting_that_cannot_be_parsed(settings, name, value):
    setattr(settings, name, value)
    with pytest.raises(SystemCheckError, match=rf"hl7gateway\.E102.*{name}"):
        call_command("check")


def test_refused_ack_frames_are_read_like_any_ack(server):
    """The AR travels in an MLLP frame like every ACK, and the connection stays open."""
    with connect(server.port, "127.0.0.2") as sock:
        sock.sendall(b"\x0b" + order("K-1") + b"\x1c\r")
        first = recv_frame(sock)
        sock.sendall(b"\x0b" + order("K-2") + b"\x1c\r")
        second = recv_frame(sock)
    assert ack_fields(first)["msa_2"] == "K-1" and ack_fields(second)["msa_2"] == "K-2"
