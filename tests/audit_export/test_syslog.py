"""Audit messages over syslog to a real Audit Record Repository: rsyslogd (Debian's package)
with imtcp, imudp and imtcp over TLS (the gtls stream driver), each started by the test on free
ports; what rsyslog parsed and wrote is read back and checked."""

from __future__ import annotations

import logging

import pytest
from lxml import etree

from audit_export.export import export_batch
from audit_export.message import to_xml
from audit_export.syslog import BOM, UDP_MAX_IPV4, MessageTooLarge, SyslogSender, format_message, octet_counted
from project import tls
from project.audit_repository import Destination, parse_url
from tests.support.audit_records import ENGINE, PATIENT, RECORDS, SCHEMA, STUDY, WHEN, record
from tests.support.rsyslog import Rsyslog, TLSFiles
from tests.support.tls_certs import TestPKI

# Three records with outcomes 0, 4 and 8, and a patient name outside ASCII: MSG-LEN counts octets.
UMLAUT_PATIENT = {**PATIENT, "detail": {"PatientName": "MÜLLER^TEST"}}
BATCH = [
    {**RECORDS["instances received by C-STORE"], "seq": 11,
     "objects": [STUDY, UMLAUT_PATIENT]},
    {**RECORDS["failed login"], "seq": 12},
    {**RECORDS["security alert: restricted function"], "seq": 13},
]


def header_and_xml(raw: bytes) -> tuple[list[str], bytes]:
    """The seven RFC 5424 header fields and the MSG after its BOM."""
    parts = raw.split(b" ", 7)
    assert parts[7].startswith(BOM)
    return [p.decode() for p in parts[:7]], parts[7][len(BOM):]


def check_received(received, records) -> None:
    assert len(received) == len(records)
    for got, rec in zip(received, records, strict=True):
        header, xml = header_and_xml(got.raw)
        assert header[0] == f"<{80 + {0: 5, 4: 4, 8: 3}[rec['outcome']]}>1"
        assert (got.pri, got.version, got.msgid, got.app_name) == (header[0][1:3], "1", "IHE+RFC-3881",
                                                                   "RIS-PACS-TEST")
        assert got.timestamp == "2025-03-14T07:26:53.589793Z" == header[1]
        assert xml == to_xml(rec, ENGINE)
        root = etree.fromstring(xml)
        assert SCHEMA.validate(root), SCHEMA.error_log
        assert root.find("EventIdentification/EventID").get("csd-code") == rec["event_id"]


@pytest.fixture
def pki(tmp_path):
    return TestPKI(tmp_path / "pki")


@pytest.fixture
def tls_repository(tmp_path, pki):
    issued = pki.issue("arr.test", dns=["localhost"], ips=["127.0.0.1"])
    repo = Rsyslog(tmp_path / "rsyslog-tls", tls=TLSFiles(pki.ca_file, issued.chain, issued.key))
    repo.start()
    yield repo
    repo.stop()


# -- the message and its framing ---------------------------------------------------------------

def test_rfc5424_header_severity_by_outcome_and_octet_counting():
    xml = to_xml({**RECORDS["patient record update"], "objects": [UMLAUT_PATIENT]}, ENGINE)
    for outcome, pri in ((0, 85), (4, 84), (8, 83), (12, 82)):
        message = format_message(xml, outcome=outcome, timestamp=WHEN, app_name="RIS PACS", hostname="pacs.test",
                                 procid=4242)
        assert message == (f"<{pri}>1 2025-03-14T07:26:53.589793Z pacs.test RISPACS 4242 IHE+RFC-3881 - ".encode()
                           + BOM + xml)
    framed = octet_counted(message)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(rest) == len(message) > len(message.decode())  # octets, not characters


@pytest.mark.parametrize(("url", "expected"), [
    ("syslog+tls://arr.example:6514", Destination("tls", "arr.example", 6514)),
    ("syslog+tcp://10.0.0.5", Destination("tcp", "10.0.0.5", 601)),
    ("SYSLOG+UDP://[::1]:5140", Destination("udp", "::1", 5140)),
])
def test_repository_urls(url, expected):
    assert parse_url(url) == expected


@pytest.mark.parametrize("url", ["https://arr.example", "syslog+tls://", "syslog+tcp://h:99999",
                                 "syslog+udp://h:514/path", "syslog+sctp://h:1"])
def test_bad_repository_urls(url):
    with pytest.raises(ValueError):
        parse_url(url)


# -- to rsyslog --------------------------------------------------------------------------------

@pytest.mark.socket
def test_a_batch_over_tcp_is_received_framed_parsed_and_valid(rsyslog):
    with SyslogSender(f"syslog+tcp://127.0.0.1:{rsyslog.tcp_port}", timeout=5) as sender:
        assert export_batch(BATCH, sender, ENGINE) == 13
        assert sender.last_error == ""
    check_received(rsyslog.wait_for(3), BATCH)


@pytest.mark.socket
def test_a_batch_over_udp_one_datagram_each(rsyslog):
    with SyslogSender(f"syslog+udp://127.0.0.1:{rsyslog.udp_port}", timeout=5) as sender:
        assert export_batch(BATCH, sender, ENGINE) == 13
    check_received(rsyslog.wait_for(3), BATCH)


@pytest.mark.socket
def test_a_message_too_large_for_udp_is_refused_and_reported_not_cut(rsyslog, caplog):
    with SyslogSender(f"syslog+udp://127.0.0.1:{rsyslog.udp_port}", timeout=5) as sender:
        with pytest.raises(MessageTooLarge):
            sender.send([b"x" * (UDP_MAX_IPV4 + 1)])
        huge = record("110112", "E", actor="dr.reader", actor_kind="user", seq=21,
                      objects=[{"type": "query", "id": "reading-worklist", "detail": {"query": "q" * 70000}}])
        following = {**RECORDS["login"], "seq": 22}
        with caplog.at_level(logging.ERROR, logger="audit_export.export"):
            assert export_batch([huge, following], sender, ENGINE) == 22
    assert "seq=21 cannot be exported" in caplog.text and "octets" in caplog.text
    check_received(rsyslog.wait_for(1), [following])


@pytest.mark.socket
def test_a_batch_over_tls_with_the_repository_certificate_verified(tls_repository, pki, settings):
    settings.AUDIT_REPOSITORY_URL = f"syslog+tls://127.0.0.1:{tls_repository.tcp_port}"
    settings.AUDIT_REPOSITORY_CA_CERTIFICATES = str(pki.ca_file)
    settings.AUDIT_REPOSITORY_CERTIFICATE = settings.AUDIT_REPOSITORY_PRIVATE_KEY = ""
    with SyslogSender.from_settings() as sender:
        assert sender.destination.transport == "tls"
        assert export_batch(BATCH, sender, ENGINE) == 13
    check_received(tls_repository.wait_for(3), BATCH)


@pytest.mark.socket
def test_a_tls_repository_with_an_untrusted_certificate_gets_nothing(tls_repository, tmp_path):
    stranger_ca = TestPKI(tmp_path / "other")
    context = tls.client_context(ca_certificates=str(stranger_ca.ca_file), certificate="", private_key="")
    with SyslogSender(f"syslog+tls://127.0.0.1:{tls_repository.tcp_port}", ssl_context=context,
                      timeout=5) as sender:
        assert export_batch(BATCH, sender, ENGINE) is None
        assert "certificate verify failed" in sender.last_error
    assert tls_repository.received() == []


@pytest.mark.socket
def test_a_repository_that_is_down_gets_nothing_counted_and_one_that_comes_back_gets_all(rsyslog):
    sender = SyslogSender(f"syslog+tcp://127.0.0.1:{rsyslog.tcp_port}", timeout=5)
    try:
        assert export_batch(BATCH[:1], sender, ENGINE) == 11  # a kept connection
        # Stopped only once it has read what it acknowledged: a syslog receiver that stops with
        # unread data loses it (no application-level acknowledgement; see audit_export.syslog).
        rsyslog.wait_for(1)
        rsyslog.stop()
        # Down: the kept connection is found closed, a new one is refused; nothing counts as sent.
        assert export_batch(BATCH[1:], sender, ENGINE) is None
        assert "refused" in sender.last_error.lower()
        rsyslog.start()
        assert export_batch(BATCH[1:], sender, ENGINE) == 13
        assert sender.last_error == ""
        # Restarted while the sender holds its connection: the next batch goes over a new one.
        rsyslog.wait_for(3)
        rsyslog.stop()
        rsyslog.start()
        again = [{**BATCH[0], "seq": 14}]
        assert export_batch(again, sender, ENGINE) == 14
    finally:
        sender.close()
    check_received(rsyslog.wait_for(4), BATCH + again)


@pytest.mark.socket
def test_a_record_that_cannot_be_a_message_is_skipped_logged_by_seq_and_the_cursor_passes_it(rsyslog, caplog):
    broken = {**RECORDS["patient record update"], "seq": 32, "objects": []}
    batch = [{**RECORDS["login"], "seq": 31}, broken, {**RECORDS["logout"], "seq": 33}]
    with SyslogSender(f"syslog+tcp://127.0.0.1:{rsyslog.tcp_port}", timeout=5) as sender:
        with caplog.at_level(logging.ERROR, logger="audit_export.export"):
            assert export_batch(batch, sender, ENGINE) == 33
    assert "seq=32 cannot be exported: a Patient Record message needs a patient object" in caplog.text
    check_received(rsyslog.wait_for(2), [batch[0], batch[2]])


@pytest.mark.socket
def test_the_cursor_stops_before_what_was_not_sent(tmp_path):
    """With nothing listening, a batch whose first record cannot be rendered moves the cursor
    past that record only."""
    from tests.support.net import free_port

    broken = {**RECORDS["patient record update"], "seq": 41, "objects": []}
    with SyslogSender(f"syslog+tcp://127.0.0.1:{free_port()}", timeout=2) as sender:
        assert export_batch([broken, {**RECORDS["login"], "seq": 42}], sender, ENGINE) == 41
