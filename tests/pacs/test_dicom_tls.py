"""DICOM over TLS (PS3.15 B.9, the BCP 195 profile): the listener on DICOM_TLS_PORT, client
certificates verified against TLS_CA_CERTIFICATES, and a node bound to its certificate.  Real
peers: dcmtk's echoscu/findscu/storescu with ``+tls KEY CERT +cf CA``, pynetdicom with
``tls_args`` (for a source address dcmtk cannot choose), raw sockets for clients that never
finish a handshake."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from pacs.dimse import db
from pacs.models import DicomNode, DicomRefusal, Instance
from project import peers
from tests.support.dicom import (
    OTHER,
    echoscu,
    findscu,
    port_of,
    run_dicom_env,
    start_run_dicom,
    stop_process,
    tls_args,
    tls_echoscu,
)
from tests.support.net import free_port
from tests.support.orthanc import storescu, write_study

# --- the DICOM_NODES form and certificate matching (pure) -----------------------------------


def test_dicom_nodes_entry_may_name_the_certificate():
    declared, problems = peers.parse_nodes(
        "CT1@10.1.2.3:mwl+store;cert=ct1.hospital.org, US2@10.1.4.0/24:store, V6@fd00::5:mwl;cert=fd00::5,"
        "BAD1@10.0.0.1:mwl;certificate=x, BAD2@10.0.0.1:mwl;cert=, BAD3@10.0.0.1:mwl;cert=a;cert=b")
    assert [(p.ae_title, p.host, p.certificate_name) for p in declared] == [
        ("CT1", "10.1.2.3", "ct1.hospital.org"), ("US2", "10.1.4.0/24", ""), ("V6", "fd00::5", "fd00::5")]
    assert [entry for entry, _ in problems] == ["BAD1@10.0.0.1:mwl;certificate=x", "BAD2@10.0.0.1:mwl;cert=",
                                                "BAD3@10.0.0.1:mwl;cert=a;cert=b"]


@pytest.mark.parametrize("expected,presented,matches", [
    ("ct1.hospital.org", ["CT1", "ct1.hospital.org"], True),
    ("CT1.Hospital.ORG", ["ct1.hospital.org"], True),  # DNS names are case-insensitive
    ("CT1", ["CT1"], True),  # the subject CN
    ("10.1.2.3", ["10.1.2.3"], True),
    ("fd00::5", ["FD00:0:0:0:0:0:0:5"], True),  # an IP SAN in another spelling
    ("ct1.hospital.org", ["ct2.hospital.org", "CT2"], False),
    ("ct1.hospital.org", ["*.hospital.org"], False),  # no wildcards: a node is one certificate
    ("", ["CT1"], False),
])
def test_certificate_names_match_exactly(expected, presented, matches):
    assert peers.certificate_matches(expected, presented) is matches


# --- the TLS listener --------------------------------------------------------------------------


def _rejected(proc) -> bool:
    out = proc.stdout + proc.stderr
    return proc.returncode != 0 and "Association Rejected" in out and "Calling AE Title Not Recognized" in out


def _handshake_refused(proc) -> bool:
    """The association never started: the TLS handshake failed (no A-ASSOCIATE-RJ was read)."""
    out = proc.stdout + proc.stderr
    return proc.returncode != 0 and "Association Rejected" not in out and "Association Accepted" not in out


def test_declared_modality_over_tls_echo_worklist_and_store_with_its_certificate(tls_listen, pki, tmp_path):
    DicomNode.objects.create(ae_title="CT1", host="127.0.0.1", certificate_name="ct1.hospital.test")
    server = tls_listen()
    proc = tls_echoscu(server, pki, pki.ct1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc, _items = findscu(server.tls_server, ["AccessionNumber="], tmp_path / "find", aet="CT1",
                           extra=tls_args(pki, pki.ct1))
    assert proc.returncode == 0 and "Association Rejected" not in proc.stdout + proc.stderr, proc.stderr
    uid = "1.2.826.0.1.3680043.99.77"
    proc = storescu(port_of(server.tls_server), write_study(tmp_path / "study", 2, study_instance_uid=uid),
                    calling="CT1", extra=tuple(tls_args(pki, pki.ct1)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert Instance.objects.filter(study__study_instance_uid=uid).count() == 2  # indexed as usual


def test_clients_without_a_valid_certificate_refused_at_the_handshake_while_the_modality_is_served(
        tls_listen, pki, caplog):
    DicomNode.objects.create(ae_title="CT1", host="127.0.0.1", certificate_name="ct1.hospital.test")
    server = tls_listen()
    for issued in (None, pki.stranger, pki.expired):  # none, from an untrusted CA, expired
        proc = tls_echoscu(server, pki, issued)
        assert _handshake_refused(proc), proc.stdout + proc.stderr
    # a client that opened the TLS port and never finishes its handshake holds nothing from CT1
    with socket.create_connection(("127.0.0.1", port_of(server.tls_server))) as idle:
        idle.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then silence
        proc = tls_echoscu(server, pki, pki.ct1)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    db.flush()
    assert not DicomRefusal.objects.exists()  # refused by TLS, before any AE title was read
    # logged with the reason, one line per interval however many fail (the first three: one line)
    [line] = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert line.peer == "127.0.0.1" and sum(line.failures.values()) == 1


def test_node_with_a_certificate_name_refused_from_the_clear_port_and_with_another_certificate(tls_listen, pki):
    DicomNode.objects.create(ae_title="CT1", host="127.0.0.1", certificate_name="ct1.hospital.test")
    DicomNode.objects.create(ae_title="MOD1", host="127.0.0.1")
    server = tls_listen()
    assert _rejected(echoscu(server, aet="CT1"))  # the clear port: no certificate there
    assert _rejected(tls_echoscu(server, pki, pki.ct2))  # a valid certificate, but CT2's
    # a node without a certificate name follows the host rule on both ports
    assert echoscu(server, aet="MOD1").returncode == 0
    assert tls_echoscu(server, pki, pki.ct2, aet="MOD1").returncode == 0
    db.flush()
    assert sorted(DicomRefusal.objects.values_list("address", "reason", "calling_ae_title", "count")) == [
        ("127.0.0.1", DicomRefusal.CERTIFICATE, "CT1", 2)]


def test_optional_client_certificates_admit_an_anonymous_client_but_not_as_a_bound_node(tls_listen, pki, settings):
    DicomNode.objects.create(ae_title="CT1", host="127.0.0.1", certificate_name="ct1.hospital.test")
    DicomNode.objects.create(ae_title="MOD1", host="127.0.0.1")
    settings.DICOM_TLS_CLIENT_CERTIFICATES = "optional"
    server = tls_listen()
    assert tls_echoscu(server, pki, None, aet="MOD1").returncode == 0  # TLS without a certificate
    assert _rejected(tls_echoscu(server, pki, None, aet="CT1"))
    assert _handshake_refused(tls_echoscu(server, pki, pki.stranger, aet="MOD1"))  # presented: verified
    assert tls_echoscu(server, pki, pki.ct1).returncode == 0


def _client_context(pki, issued) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_file))
    context.load_cert_chain(str(issued.cert), str(issued.key))
    return context


def test_a_verified_certificate_admits_no_unknown_ae_by_itself(tls_listen, pki):
    """An unknown calling AE follows DICOM_UNKNOWN_AE_FROM on the TLS port as on the clear one."""
    server = tls_listen()
    assert tls_echoscu(server, pki, pki.ct2, aet="STRANGER").returncode == 0  # from the loopback default
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port_of(server.tls_server), ae_title="PACS", bind_address=(OTHER, 0),
                         tls_args=(_client_context(pki, pki.ct2), "localhost"))
    assert assoc.is_rejected
    db.flush()
    assert list(DicomRefusal.objects.values_list("address", "reason")) == [(OTHER, DicomRefusal.UNKNOWN_AE)]


def test_clear_text_and_silent_clients_on_the_tls_port_are_cut_within_the_acse_timeout(tls_listen, pki, settings):
    settings.DICOM_ACSE_TIMEOUT = 2.0
    DicomNode.objects.create(ae_title="CT1", host="127.0.0.1", certificate_name="ct1.hospital.test")
    server = tls_listen()
    port = port_of(server.tls_server)
    # clear DICOM: an A-ASSOCIATE-RQ is no TLS record; the connection is closed, nothing answered in clear
    proc = echoscu(server.tls_server, aet="CT1")
    assert proc.returncode != 0 and "Association Rejected" not in proc.stdout + proc.stderr
    # silent, or a handshake begun and never finished: closed by the ACSE timeout, not later
    for first_bytes in (b"", b"\x16\x03\x01\x00"):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(first_bytes)
            sock.settimeout(20)
            started = time.monotonic()
            assert sock.recv(1024) == b""
            elapsed = time.monotonic() - started
        assert 1.5 <= elapsed < 10, elapsed
    assert tls_echoscu(server, pki, pki.ct1).returncode == 0


def test_pending_tls_connections_are_capped_by_closing_the_oldest(tls_listen, pki, settings):
    """Connections that finished their handshake but sent no A-ASSOCIATE-RQ count as pending: one
    more than DICOM_MAX_PENDING_CONNECTIONS closes the oldest at once, through its TLS socket."""
    settings.DICOM_MAX_PENDING_CONNECTIONS = 2
    DicomNode.objects.create(ae_title="CT1", host="127.0.0.1", certificate_name="ct1.hospital.test")
    server = tls_listen()
    context = _client_context(pki, pki.ct1)
    socks = [context.wrap_socket(socket.create_connection(("127.0.0.1", port_of(server.tls_server))),
                                 server_hostname="localhost") for _ in range(3)]
    try:
        socks[0].settimeout(10)  # well inside DICOM_ACSE_TIMEOUT (30 s): closed by the cap, not the timeout
        try:
            assert socks[0].recv(1024) == b""
        except (ssl.SSLEOFError, ConnectionError):
            pass
        assert server.tls_server.pending_count() <= 2
        assert tls_echoscu(server, pki, pki.ct1).returncode == 0
    finally:
        for sock in socks:
            sock.close()


def test_run_dicom_serves_both_ports_with_workers(transactional_db, pki):
    DicomNode.objects.create(ae_title="CT1", host="127.0.0.1", certificate_name="ct1.hospital.test")
    port, tls_port = free_port(), free_port()
    env = run_dicom_env(TLS_CERTIFICATE=pki.engine.chain, TLS_PRIVATE_KEY=pki.engine.key,
                        TLS_CA_CERTIFICATES=pki.ca_file, DICOM_TLS_PORT=tls_port)
    proc = start_run_dicom(port, env, "--workers", "2", stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"tls={tls_port} client_certificates=required workers=2" in line, line

        class Ports:
            server_address = ("127.0.0.1", port)
            tls_server = type("TLS", (), {"server_address": ("127.0.0.1", tls_port)})

        deadline = time.monotonic() + 60
        while tls_echoscu(Ports, pki, pki.ct1).returncode != 0:  # the workers are starting
            assert proc.poll() is None and time.monotonic() < deadline, "run_dicom did not answer over TLS"
            time.sleep(0.3)
        for _ in range(8):  # each worker takes some of the connections (SO_REUSEPORT)
            result = tls_echoscu(Ports, pki, pki.ct1)
            assert result.returncode == 0, result.stdout + result.stderr
        assert _rejected(echoscu(Ports, aet="CT1"))
    finally:
        assert stop_process(proc)


def test_run_dicom_stops_on_an_unreadable_certificate(transactional_db, tmp_path):
    env = run_dicom_env(TLS_CERTIFICATE=tmp_path / "missing.pem", TLS_PRIVATE_KEY=tmp_path / "missing.key")
    proc = start_run_dicom(free_port(), env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _out, err = proc.communicate(timeout=60)
    # The system checks run first (pacs.E007), before run_dicom builds its TLS context.
    assert proc.returncode != 0 and "pacs.E007" in err and "cannot load the TLS files" in err


def test_nodes_bound_to_a_certificate_named_when_no_tls_listener_can_admit_them(transactional_db, settings, caplog):
    from pacs.dimse.server import start_server

    settings.TLS_CERTIFICATE = ""  # no TLS listener
    DicomNode.objects.create(ae_title="CT1", host="127.0.0.1", certificate_name="ct1.hospital.test")
    DicomNode.objects.create(ae_title="MOD1", host="127.0.0.1")
    with caplog.at_level("WARNING", logger="pacs.dimse"):
        server = start_server("127.0.0.1", 0)
    server.shutdown()
    assert server.tls_server is None
    [record] = [r for r in caplog.records if "certificate name cannot associate" in r.getMessage()]
    assert record.nodes == ["CT1"]
