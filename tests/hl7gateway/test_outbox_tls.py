"""ORU^R01 over MLLP over TLS (destinations ``mllps://``): to the TLS mode of the MLLP sink
(Python's ``ssl`` on a real listener), through a real Celery worker, and refused -- never sent in
clear text -- when the sink's certificate does not verify."""

from __future__ import annotations

import pytest

from hl7gateway import client
from hl7gateway.models import OutboundDestination, OutboundMessage
from hl7gateway.outbox import delivery, destinations
from tests.factories import oru as h
from tests.support.celery_worker import oru_worker as Worker
from tests.support.mllp_sink import MLLPSink, tls_context
from tests.support.tls_certs import TestPKI
from tests.support.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def pki(tmp_path, settings):
    """The hospital CA, and the engine's certificate in the settings (offered as a client)."""
    ca = TestPKI(tmp_path / "ca")
    engine = ca.issue("engine.hospital.test")
    settings.TLS_CERTIFICATE, settings.TLS_PRIVATE_KEY = str(engine.chain), str(engine.key)
    settings.TLS_CA_CERTIFICATES = str(ca.ca_file)
    settings.HL7_ORU_CONNECT_TIMEOUT_SECONDS = 2.0
    settings.HL7_ORU_BATCH_SIZE = 1
    return ca


def test_mllps_destinations_are_parsed_and_synchronised():
    specs = destinations.parse_destinations("ehr=mllps://ehr.hospital.test:2577?version=2.3.1,billing=mllp://bill:2576")
    assert [(s.name, s.host, s.port, s.tls) for s in specs] == [
        ("ehr", "ehr.hospital.test", 2577, True), ("billing", "bill", 2576, False)]
    with pytest.raises(ValueError, match="mllps://host:port"):
        destinations.parse_destinations("ehr=https://ehr:443")
    destinations.sync_environment_destinations("ehr=mllps://ehr.hospital.test:2577")
    dest = OutboundDestination.objects.get(name="ehr")
    assert dest.tls and dest.url == "mllps://ehr.hospital.test:2577"
    destinations.sync_environment_destinations("ehr=mllp://ehr.hospital.test:2577")
    assert not OutboundDestination.objects.get(name="ehr").tls


@pytest.mark.usefixtures("broker")
def test_oru_delivered_over_mllps_through_a_real_celery_worker(pki, tmp_path, settings):
    """The sink requires a client certificate from the hospital CA: delivery proves the engine
    verified the sink's certificate (IP SAN 127.0.0.1) and offered its own."""
    sink_cert = pki.issue("ehr.hospital.test", ips=["127.0.0.1"])
    with MLLPSink(tls=tls_context(sink_cert.chain, sink_cert.key, ca=pki.ca_file)) as sink:
        h.destination("ehr", sink.port, tls=True)
        worker = Worker(tmp_path, "tlsoru")
        worker.env.update(TLS_CERTIFICATE=settings.TLS_CERTIFICATE, TLS_PRIVATE_KEY=settings.TLS_PRIVATE_KEY,
                          TLS_CA_CERTIFICATES=settings.TLS_CA_CERTIFICATES)
        worker.start()
        try:
            h.sign_report(h.study(), h.radiologist())
            row = OutboundMessage.objects.get()
            wait_until(lambda: OutboundMessage.objects.get().status == "DELIVERED", 60, "delivery over TLS", worker)
        finally:
            worker.stop()
        assert sink.control_ids() == [row.message_control_id]
        assert sink.handshake_failures == 0
        subject = dict(field[0] for field in sink.peer_certificates[0]["subject"])
        assert subject["commonName"] == "engine.hospital.test"


@pytest.mark.parametrize("problem, reason", [
    ("untrusted CA", "self-signed certificate in certificate chain"),
    ("another host's certificate", "IP address mismatch"),
    ("expired", "certificate has expired"),
])
def test_sink_certificate_that_does_not_verify_fails_delivery_with_a_clear_reason(pki, settings, admin_client,
                                                                                  problem, reason):
    sink_cert = {"untrusted CA": TestPKI(pki.directory.parent / "other", "Intruder CA").issue(
                     "ehr", ips=["127.0.0.1"]),
                 "another host's certificate": pki.issue("ehr-elsewhere", dns=["ehr.hospital.test"], ips=["10.1.2.3"]),
                 "expired": pki.issue("ehr-expired", ips=["127.0.0.1"], expired=True)}[problem]
    with MLLPSink(tls=tls_context(sink_cert.chain, sink_cert.key)) as sink:
        h.destination("ehr", sink.port, tls=True)
        h.sign_report(h.study(), h.radiologist())
        row = OutboundMessage.objects.get()
        assert delivery.deliver(row.pk) == "PENDING"
        row.refresh_from_db()
        assert row.last_outcome == client.CONNECT_ERROR
        assert f"TLS: the certificate of 127.0.0.1:{sink.port} is not accepted" in row.last_error
        assert reason in row.last_error
        assert sink.count == 0 and sink.handshake_failures >= 1  # nothing went out, in clear text or otherwise
        page = admin_client.get("/interfaces/").content.decode()
        assert reason in page and f"mllps://127.0.0.1:{sink.port}" in page


def test_mllps_destination_never_falls_back_to_clear_text(pki):
    """A destination declared mllps:// that listens in clear text gets a TLS ClientHello, never the message."""
    with MLLPSink() as sink:  # clear text
        result = client.send_message("127.0.0.1", sink.port, b"MSH|^~\\&|PACS|RAD|EHR|H|20250101||ORU^R01|X1|P|2.5.1\r",
                                     message_control_id="X1", connect_timeout=2, ack_timeout=2, tls=True)
        assert result.outcome in (client.CONNECT_ERROR, client.CONNECTION_LOST, client.TIMEOUT)
        # The ClientHello's random bytes may hold an MLLP start block and end sequence, which the
        # clear-text sink then takes for a frame: what matters is that the message never arrived.
        assert "X1" not in sink.control_ids()
