# ruff: noqa: F811 - pytest fixtures imported from helper modules
"""Routing to a VNA over TLS (PS3.15 B.9, BCP 195): Orthanc with DICOM TLS as the VNA, reached
through a real Celery worker by both C-STORE senders (the engine's requestor and dcmtk's
``storescu +tls``) and committed; a VNA whose certificate does not verify fails the transfer with
the reason, and not one byte of DICOM goes out in clear; STOW-RS over https verified against
TLS_CA_CERTIFICATES (socat's OpenSSL in front of Orthanc's DICOMweb: Debian's Orthanc 1.10.1
crashes on its own HTTPS, see the README's "TLS: the VNA")."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import pytest

from pacs import scu, stow
from pacs.models import Transfer, TransferItem, VnaDestination
from pacs.models import images as im
from pacs.models import transfers as tr
from pacs.services.routing.sending import ItemToSend, PermanentError
from project.delivery.destinations import parse_vna
from tests.support.dicom import port
from tests.support.net import free_port
from tests.support.orthanc import OrthancProcess, OrthancTLS, make_instance, write_study
from tests.support.routing import complete_now, send_matched_study
from tests.support.tls_certs import TestPKI
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

SOCAT = "/usr/bin/socat"


@pytest.fixture
def pki(tmp_path):
    return TestPKI(tmp_path / "pki")


@pytest.fixture
def engine_tls(pki, settings, monkeypatch):
    """The engine's certificate and the hospital CA, in the settings and in the environment the
    worker process inherits (request it before ``worker``)."""
    issued = pki.issue("PACS", dns=["localhost"], ips=["127.0.0.1"])
    values = {"TLS_CERTIFICATE": str(issued.chain), "TLS_PRIVATE_KEY": str(issued.key),
              "TLS_CA_CERTIFICATES": str(pki.ca_file)}
    for name, value in values.items():
        setattr(settings, name, value)
        monkeypatch.setenv(name, value)
    return issued


def tls_vna(tmp_path, engine, issued, trusted, **kwargs) -> OrthancProcess:
    return OrthancProcess(tmp_path / f"orthanc-{issued.name}", engine_aet="PACS", engine_port=port(engine),
                          tls=OrthancTLS(issued.cert, issued.key, trusted, **kwargs))


def dicoms_destination(vna, *, port_=None) -> VnaDestination:
    return VnaDestination.objects.create(name=f"orthanc-tls-{vna.dicom_port}", kind=tr.KIND_DICOM, ae_title=vna.aet,
                                         host="127.0.0.1", port=port_ or vna.dicom_port, tls=True)


class Recorder:
    """A TCP relay that keeps every byte the engine sends towards the VNA, as it went on the wire."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent = bytearray()
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source, sink, record):
        try:
            while data := source.recv(65536):
                if record:
                    self.sent += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


def test_parse_dicoms_destinations():
    parsed = parse_vna("dicoms://VNA@vna.example:2762,dicom://OLD@h:104")
    assert [(d["ae_title"], d["host"], d["port"], d["tls"]) for d in parsed] == [
        ("VNA", "vna.example", 2762, True), ("OLD", "h", 104, False)]
    with pytest.raises(ValueError):
        parse_vna("dicomss://VNA@h:1")


def test_study_routed_over_tls_is_committed(engine, pki, engine_tls, sender, worker, tmp_path):
    """The VNA requires the engine's certificate (DicomTlsRemoteCertificateRequired) and speaks
    only TLS on its DICOM port; its storage commitment report comes to the engine's clear port."""
    vna = tls_vna(tmp_path, engine, pki.issue("vna", dns=["localhost"], ips=["127.0.0.1"]), pki.ca_file,
                  remote_certificate_required=True).start()
    try:
        dicoms_destination(vna)
        study, _ = send_matched_study(engine, tmp_path, 5)
        complete_now(study)
        transfer = Transfer.objects.get(study=study)
        wait_for(lambda: Transfer.objects.get(pk=transfer.pk).status == tr.COMMITTED, 60,
                 message=f"committed over TLS; worker log:\n{worker.log()[-3000:]}")
        assert vna.count_instances() == 5
        assert TransferItem.objects.filter(transfer=transfer, status=tr.ITEM_COMMITTED).count() == 5
        study.refresh_from_db()
        assert study.status == im.ARCHIVED
    finally:
        vna.stop()


def test_untrusted_vna_certificate_fails_the_transfer_and_nothing_goes_in_clear(
        engine, pki, engine_tls, sender, worker, tmp_path):
    stranger = TestPKI(tmp_path / "stranger").issue("vna", dns=["localhost"], ips=["127.0.0.1"])
    vna = tls_vna(tmp_path, engine, stranger, pki.ca_file).start()
    recorder = Recorder(vna.dicom_port)
    try:
        dicoms_destination(vna, port_=recorder.port)
        study, _ = send_matched_study(engine, tmp_path, 3)
        complete_now(study)
        transfer = Transfer.objects.get(study=study)
        wait_for(lambda: Transfer.objects.get(pk=transfer.pk).status == tr.FAILED, 60,
                 message=f"failed on the certificate; worker log:\n{worker.log()[-3000:]}")
        failed = Transfer.objects.get(pk=transfer.pk)
        assert failed.attempts == 1  # permanent: no retry mends a refused certificate
        assert "certificate" in failed.reason and "certificate verify failed" in failed.reason, failed.reason
        assert vna.count_instances() == 0
        assert recorder.connections >= 1
        # Only TLS handshake records (content type 22) left the engine: no A-ASSOCIATE-RQ
        # (PDU type 01), no AE title, no patient data in clear.
        assert recorder.sent[:1] == b"\x16", bytes(recorder.sent[:16])
        assert b"ORTHANC" not in recorder.sent and b"DOE^JOHN" not in recorder.sent and b"P1" not in recorder.sent
    finally:
        recorder.close()
        vna.stop()


@pytest.mark.parametrize("problem", ["another host", "expired"])
def test_a_vna_certificate_for_another_host_or_expired_is_refused_by_every_sender(
        engine, pki, engine_tls, routing_settings, store_dir, tmp_path, problem):
    """The host name is checked (RFC 6125) and the validity period: a certificate of the right CA
    issued to another host, or expired, fails the C-STORE of both senders and the N-ACTION."""
    issued = (pki.issue("elsewhere", dns=["elsewhere.example"]) if problem == "another host"
              else pki.issue("vna", dns=["localhost"], ips=["127.0.0.1"], expired=True))
    expected = "(mismatch|match)" if problem == "another host" else "expired"
    vna = tls_vna(tmp_path, engine, issued, pki.ca_file).start()
    try:
        destination = dicoms_destination(vna)
        path = tmp_path / "one.dcm"
        ds = make_instance(study_instance_uid="1.2.3.999")
        ds.save_as(path, enforce_file_format=True)
        item = ItemToSend(1, ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID, str(path))
        for chosen in ("engine", "dcmtk"):
            routing_settings.VNA_DICOM_SENDER = chosen
            with pytest.raises(PermanentError, match=f"certificate verify failed.*{expected}"):
                scu.send_items(destination, [item], corrections={}, progress=lambda chunk: None)
        with pytest.raises(PermanentError, match=f"certificate verify failed.*{expected}"):
            scu.request_commitment(destination, "1.2.3.4", [(ds.SOPClassUID, ds.SOPInstanceUID)])
        assert vna.count_instances() == 0
    finally:
        vna.stop()


# --- STOW-RS over https -------------------------------------------------------------------------

class TLSFront:
    """socat's OpenSSL server in front of a plain HTTP port (a TLS-terminating proxy)."""

    def __init__(self, upstream_port: int, issued, *, client_ca=None):
        self.port = free_port()
        verify = f"verify=1,cafile={client_ca}" if client_ca else "verify=0"
        listen = f"OPENSSL-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork,cert={issued.cert},key={issued.key},{verify}"
        if not os.path.exists(SOCAT):
            pytest.fail(f"socat is not installed at {SOCAT} (apt-get install socat; make test does it)")
        self.process = subprocess.Popen([SOCAT, listen,
                                         f"TCP:127.0.0.1:{upstream_port}"], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("socat did not listen")

    def stop(self):
        self.process.terminate()
        self.process.wait(5)


@pytest.fixture
def dicomweb_vna(tmp_path):
    vna = OrthancProcess(tmp_path / "orthanc-web", dicomweb=True).start()
    try:
        yield vna
    finally:
        vna.stop()


def stow_items(tmp_path, n=2):
    paths = write_study(tmp_path / "stow", n, study_instance_uid="1.2.3.777")
    out = []
    for k, path in enumerate(paths, 1):
        from pydicom import dcmread

        ds = dcmread(path)
        out.append(ItemToSend(k, ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID, str(path)))
    return out


def test_stow_over_https_verified_with_the_engine_certificate(pki, engine_tls, dicomweb_vna, tmp_path):
    """The front requires a client certificate of the hospital CA: the engine presents its own."""
    front = TLSFront(dicomweb_vna.http_port, pki.issue("web", ips=["127.0.0.1"]), client_ca=pki.ca_file)
    try:
        destination = VnaDestination(name="web", kind=tr.KIND_STOW, url=f"https://127.0.0.1:{front.port}/dicom-web")
        outcomes = stow.send_items(destination, stow_items(tmp_path), corrections={}, progress=lambda chunk: None)
        assert [o.ok for o in outcomes] == [True, True]
        assert dicomweb_vna.count_instances() == 2
    finally:
        front.stop()


def test_stow_to_an_untrusted_https_certificate_is_refused(pki, engine_tls, dicomweb_vna, tmp_path):
    stranger = TestPKI(tmp_path / "stranger").issue("web", ips=["127.0.0.1"])
    front = TLSFront(dicomweb_vna.http_port, stranger)
    try:
        destination = VnaDestination(name="web", kind=tr.KIND_STOW, url=f"https://127.0.0.1:{front.port}/dicom-web")
        with pytest.raises(PermanentError, match="certificate was refused: .*certificate verify failed|unable to get"):
            stow.send_items(destination, stow_items(tmp_path), corrections={}, progress=lambda chunk: None)
        assert dicomweb_vna.count_instances() == 0
    finally:
        front.stop()
