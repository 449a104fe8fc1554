"""Declared DICOM peers (PS3.8 7.1.1, 9.3.4): only a declared node, calling from its host, gets
the services it was granted; an unknown calling AE only from DICOM_UNKNOWN_AE_FROM (the loopback
127.0.0.1/::1 by default).  The real listener on 127.0.0.1; dcmtk's echoscu/findscu/storescu
connect from 127.0.0.1, pynetdicom bound to 127.0.0.2 (a real A-ASSOCIATE-RQ from another
address: dcmtk cannot choose its source address)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection
from pydicom.dataset import Dataset
from pynetdicom import build_role
from pynetdicom.sop_class import (
    CTImageStorage,
    ModalityWorklistInformationFind,
    StorageCommitmentPushModel,
    Verification,
)

from pacs.dimse import db
from pacs.models import DicomNode, DicomRefusal, Instance, Transfer
from pacs.models import transfers as tr
from project import peers
from tests.factories import committing_transfer
from tests.support.dicom import DCMTK_ENV, OTHER, associate_from, echoscu, findscu, port_of
from tests.support.net import dcmtk_tool, free_port
from tests.support.orthanc import storescu, write_study

# --- the DICOM_NODES form and address matching (pure) ----------------------------------------

def test_dicom_nodes_form_is_parsed_and_bad_entries_are_named():
    declared, problems = peers.parse_nodes(
        "CT1@10.1.2.3:mwl+mpps+store, US2@10.1.4.0/24:store,VNA@vna.example.org:commitment,V6@fd00::5:mwl,"
        "NOHOST@:store,NOGRANTS@10.0.0.1,BAD@10.0.0.1:mwl+print,THIS_AE_IS_TOO_LONG@10.0.0.1:mwl,"
        "SP@a b:mwl,CT1@10.9.9.9:mwl")
    assert [(p.ae_title, p.host, sorted(p.grants)) for p in declared] == [
        ("CT1", "10.1.2.3", ["mpps", "mwl", "store"]), ("US2", "10.1.4.0/24", ["store"]),
        ("VNA", "vna.example.org", ["commitment"]), ("V6", "fd00::5", ["mwl"])]
    assert [entry for entry, _ in problems] == ["NOHOST@:store", "NOGRANTS@10.0.0.1", "BAD@10.0.0.1:mwl+print",
                                                "THIS_AE_IS_TOO_LONG@10.0.0.1:mwl", "SP@a b:mwl", "CT1@10.9.9.9:mwl"]
    assert "required" in problems[0][1] and "print" in problems[2][1] and "twice" in problems[5][1]
    # echo is granted with every declaration; the others only when named
    assert declared[1].flags() == {"allow_echo": True, "allow_mwl_find": False, "allow_mpps": False,
                                   "allow_store": True, "allow_storage_commitment": False,
                                   "allow_query_retrieve": False}


def test_dicom_nodes_form_takes_the_query_retrieve_grant_and_a_port():
    declared, problems = peers.parse_nodes("WS1@10.1.2.7:qr;port=11113,ARCH@10.1.2.8:store+qr;port=0,"
                                           "X@10.1.2.9:qr;port=ab,Y@10.1.2.9:qr;port=104;port=105")
    assert [(p.ae_title, p.port, p.flags()["allow_query_retrieve"]) for p in declared] == [("WS1", 11113, True)]
    assert [entry for entry, _ in problems] == ["ARCH@10.1.2.8:store+qr;port=0", "X@10.1.2.9:qr;port=ab",
                                                "Y@10.1.2.9:qr;port=104;port=105"]
    assert "1 to 65535" in problems[0][1]


@pytest.mark.parametrize("host,address,expected", [
    ("10.1.2.3", "10.1.2.3", True), ("10.1.2.3", "10.1.2.4", False),
    ("10.1.4.0/24", "10.1.4.77", True), ("10.1.4.0/24", "10.1.5.1", False),
    ("10.1.2.3", "::ffff:10.1.2.3", True),  # a dual-stack listener sees IPv4 peers mapped
    ("fd00::/64", "fd00::9", True), ("fd00::/64", "10.1.2.3", False),
    ("localhost", "127.0.0.1", True), ("localhost", "10.1.2.3", False),
    ("", "127.0.0.1", False), ("no-such-host.invalid", "127.0.0.1", False),
])
def test_address_matches_address_network_and_host_name(host, address, expected):
    assert peers.address_matches(host, address) is expected


def test_loopback_default_is_only_127_0_0_1_and_ipv6_loopback():
    default = ["127.0.0.1", "::1"]
    assert peers.in_networks("127.0.0.1", default) and peers.in_networks("::1", default)
    assert not peers.in_networks(OTHER, default) and not peers.in_networks("10.0.0.1", default)
    assert peers.is_everywhere(["10.0.0.0/8", "::/0"]) and not peers.is_everywhere(default)


# --- the real listener ----------------------------------------------------------------------

CALLING_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x03)  # rejected-permanent, service user, PS3.8 9.3.4


def test_unknown_ae_from_another_address_rejected_counted_and_logged_without_patient_data(listen, caplog):
    server = listen()
    assoc, rejection = associate_from(server, "STRANGER", [Verification, ModalityWorklistInformationFind])
    assert assoc.is_rejected and rejection == CALLING_AE_NOT_RECOGNIZED
    assoc, rejection = associate_from(server, "STRANGER", [Verification])
    assert rejection == CALLING_AE_NOT_RECOGNIZED
    # the same AE title from 127.0.0.1 (dcmtk) is admitted: the loopback default
    assert echoscu(server, aet="STRANGER").returncode == 0
    db.flush()
    refusal = DicomRefusal.objects.get()
    assert (refusal.address, refusal.reason, refusal.calling_ae_title, refusal.count) == (
        OTHER, DicomRefusal.UNKNOWN_AE, "STRANGER", 2)
    logged = [r for r in caplog.records if r.getMessage() == "association rejected: unknown calling AE"]
    assert [(r.calling_ae_title, r.peer) for r in logged] == [("STRANGER", OTHER)] * 2
    assert set(vars(logged[0])) >= {"calling_ae_title", "peer"} and "PatientName" not in caplog.text


def _rejected(proc) -> bool:
    out = proc.stdout + proc.stderr
    return proc.returncode != 0 and "Association Rejected" in out and "Calling AE Title Not Recognized" in out


def test_unknown_ae_admitted_from_another_address_only_when_listed(listen, settings):
    settings.DICOM_UNKNOWN_AE_FROM = ["127.0.0.0/30"]
    server = listen()
    assoc, rejection = associate_from(server, "STRANGER", [Verification])
    assert assoc.is_established and rejection is None
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    settings.DICOM_UNKNOWN_AE_FROM = []  # "none": from nowhere, the loopback neither
    assert _rejected(echoscu(server, aet="STRANGER"))


def test_declared_nodes_from_the_environment_get_their_grants_with_dcmtk(listen, settings, store_dir, tmp_path):
    settings.DICOM_NODES_DECLARED, problems = peers.parse_nodes(
        "CT1@127.0.0.1:mwl+store,US2@127.0.0.2:store,OLD@127.0.0.1:mwl")
    assert problems == []
    listen().shutdown()  # a first start wrote OLD; it is no longer declared at the next one
    settings.DICOM_NODES_DECLARED = settings.DICOM_NODES_DECLARED[:2]
    server = listen()
    rows = {n.ae_title: n for n in DicomNode.objects.all()}
    assert {ae: (n.host, n.enabled, n.from_environment) for ae, n in rows.items()} == {
        "CT1": ("127.0.0.1", True, True), "US2": ("127.0.0.2", True, True), "OLD": ("127.0.0.1", False, True)}
    assert not rows["CT1"].allow_mpps and not rows["CT1"].allow_storage_commitment and rows["CT1"].allow_echo
    # CT1 from its host: echo, the worklist and storage
    assert echoscu(server, aet="CT1").returncode == 0
    proc, _items = findscu(server, ["AccessionNumber="], tmp_path / "find", aet="CT1")
    assert proc.returncode == 0, proc.stderr
    proc = storescu(port_of(server), write_study(tmp_path / "study", 1, study_instance_uid="1.2.826.0.1.3680043.99.1"),
                    calling="CT1")
    assert proc.returncode == 0 and Instance.objects.count() == 1, proc.stdout + proc.stderr
    # US2 from 127.0.0.1 (not its address); OLD (disabled) from the loopback default: an unknown AE,
    # admitted from 127.0.0.1 only because of the default
    assert _rejected(echoscu(server, aet="US2"))
    assert echoscu(server, aet="OLD").returncode == 0
    # US2 from its address: echo and storage accepted, the worklist refused at negotiation
    assoc, rejection = associate_from(server, "US2", [Verification, ModalityWorklistInformationFind, CTImageStorage])
    try:
        assert assoc.is_established and rejection is None
        assert {str(cx.abstract_syntax) for cx in assoc.accepted_contexts} == {str(Verification), str(CTImageStorage)}
    finally:
        assoc.release()
    db.flush()
    assert list(DicomRefusal.objects.values_list("address", "reason", "calling_ae_title")) == [
        ("127.0.0.1", DicomRefusal.UNEXPECTED_ADDRESS, "US2")]


def test_known_ae_from_an_address_outside_its_network_rejected(listen):
    DicomNode.objects.create(ae_title="CT1", host="127.0.0.1")
    DicomNode.objects.create(ae_title="CT2", host="127.0.0.0/30")
    DicomNode.objects.create(ae_title="LEGACY", host="")  # a row from before hosts were required
    server = listen()
    assoc, rejection = associate_from(server, "CT1", [Verification])
    assert rejection == CALLING_AE_NOT_RECOGNIZED
    assoc, rejection = associate_from(server, "CT2", [Verification])
    assert assoc.is_established and rejection is None
    assoc.release()
    assert _rejected(echoscu(server, aet="LEGACY"))


def test_storage_commitment_has_its_own_grant(listen):
    DicomNode.objects.create(ae_title="STOREONLY", host="127.0.0.0/30", allow_storage_commitment=False)
    DicomNode.objects.create(ae_title="VNA", host="127.0.0.0/30", allow_store=False, allow_storage_commitment=True)
    server = listen()
    role = [build_role(StorageCommitmentPushModel, scp_role=True)]
    for calling, expected in [("STOREONLY", {str(CTImageStorage)}), ("VNA", {str(StorageCommitmentPushModel)})]:
        assoc, _ = associate_from(server, calling, [StorageCommitmentPushModel, CTImageStorage], ext_neg=role)
        try:
            assert {str(cx.abstract_syntax) for cx in assoc.accepted_contexts} == expected
        finally:
            assoc.release()


@pytest.fixture
def transfer(store_dir):
    return committing_transfer()


def _commitment_report(server, calling: str, transfer, *, source: str):
    ds = Dataset()
    ds.TransactionUID = transfer.transaction_uid
    ds.ReferencedSOPSequence = []
    for uid in transfer.items.values_list("instance__sop_instance_uid", flat=True):
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.3"
        item.ReferencedSOPInstanceUID = uid
        ds.ReferencedSOPSequence.append(item)
    assoc, rejection = associate_from(server, calling, [StorageCommitmentPushModel], source=source,
                                  ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)])
    assert assoc.is_established, rejection
    try:
        status, _ = assoc.send_n_event_report(ds, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
        return int(status.Status)
    finally:
        assoc.release()


def test_storage_commitment_report_accepted_only_from_the_destination_it_answers(listen, transfer, caplog):
    """The transfer went to VNA at 127.0.0.1: a report with its Transaction UID from another AE
    title, or from VNA at another address, is refused 0x0124 and changes nothing."""
    DicomNode.objects.create(ae_title="VNA", host="127.0.0.0/30", allow_storage_commitment=True)
    DicomNode.objects.create(ae_title="OTHERVNA", host="127.0.0.0/30", allow_storage_commitment=True)
    server = listen()
    assert _commitment_report(server, "OTHERVNA", transfer, source="127.0.0.1") == 0x0124
    assert _commitment_report(server, "VNA", transfer, source=OTHER) == 0x0124
    transfer.refresh_from_db()
    assert transfer.status == tr.COMMITTING and not transfer.items.filter(status=tr.ITEM_COMMITTED).exists()
    assert [r.calling_ae_title for r in caplog.records
            if r.getMessage() == "storage commitment report refused: not from its destination"] == ["OTHERVNA", "VNA"]
    assert _commitment_report(server, "VNA", transfer, source="127.0.0.1") == 0x0000
    assert Transfer.objects.get(pk=transfer.pk).status == tr.COMMITTED


def test_a_second_listener_start_with_the_same_declarations_does_not_collide(listen, settings, caplog):
    caplog.set_level(logging.INFO, logger="pacs.peers")
    settings.DICOM_NODES_DECLARED, _ = peers.parse_nodes("CT1@127.0.0.1:mwl")
    listen()
    listen()  # a second process starting with the same declarations: the upsert does not collide
    assert DicomNode.objects.filter(ae_title="CT1", enabled=True, from_environment=True).count() == 1
    assert "dicom nodes declared by the environment" in caplog.text


@pytest.mark.django_db
@pytest.mark.parametrize("host,valid", [("", False), ("a b", False), ("10.1.4.0/24", True), ("10.1.2.3", True),
                                        ("ct-1.radiology.example.org", True), ("fd00::/64", True)])
def test_admin_requires_a_host_that_is_an_address_network_or_name(host, valid):
    from django.core.exceptions import ValidationError

    node = DicomNode(ae_title="CT9", host=host)
    if valid:
        node.full_clean()
    else:
        with pytest.raises(ValidationError) as raised:
            node.full_clean()
        assert "host" in raised.value.message_dict


def test_run_dicom_reads_dicom_nodes_from_the_environment(transactional_db):
    """As deployed: DICOM_NODES and DICOM_UNKNOWN_AE_FROM=none in the environment of
    ``manage.py run_dicom --workers 2`` (both processes write the nodes as they start)."""
    port = free_port()
    db_settings = connection.settings_dict
    env = {**os.environ, "DICOM_AE_TITLE": "PACS", "LOG_LEVEL": "WARNING",
           "DATABASE_URL": f"postgres://{db_settings['USER']}@{db_settings['HOST']}:{db_settings['PORT']}/"
                           f"{db_settings['NAME']}",
           "DICOM_NODES": "CT1@127.0.0.1:mwl+store,US2@127.0.0.2:store", "DICOM_UNKNOWN_AE_FROM": "none"}
    proc = subprocess.Popen([sys.executable, "manage.py", "run_dicom", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "2"], cwd=Path(__file__).resolve().parents[2], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def echo(aet):
        return subprocess.run([dcmtk_tool("echoscu"), "-aet", aet, "-aec", "PACS", "-to", "5", "127.0.0.1", str(port)],
                              capture_output=True, text=True, env=DCMTK_ENV, timeout=30)

    try:
        deadline = time.monotonic() + 60
        while echo("CT1").returncode != 0:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "run_dicom did not admit the declared CT1"
            time.sleep(0.3)
        assert all(echo("CT1").returncode == 0 for _ in range(4))  # whichever process takes it
        assert all(_rejected(echo(aet)) for aet in ("MOD1", "US2"))  # unknown; declared elsewhere
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert sorted(DicomNode.objects.filter(from_environment=True, enabled=True).values_list("ae_title", "host")) == [
        ("CT1", "127.0.0.1"), ("US2", "127.0.0.2")]
