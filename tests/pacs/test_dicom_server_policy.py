"""The DICOM AE as a whole: association policy, robustness, concurrency."""

from __future__ import annotations

import threading
import time

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep, ModalityWorklistInformationFind, Verification

from pacs.models import DicomNode
from tests.factories import local, make_patient, make_step
from tests.support.dicom import echoscu, findscu, mwl_find, port_of, worklist_query


def _scu(aet="MOD1", contexts=(Verification, ModalityWorklistInformationFind)):
    ae = AE(ae_title=aet)
    for cx in contexts:
        ae.add_requested_context(cx)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae


def test_echo(dicom_server):
    proc = echoscu(dicom_server)
    assert proc.returncode == 0, proc.stderr


def test_unknown_calling_ae_accepted_from_the_loopback_by_default(dicom_server, settings):
    assert settings.DICOM_UNKNOWN_AE_FROM == ["127.0.0.1", "::1"]
    assert echoscu(dicom_server, aet="ANYONE").returncode == 0


def test_unknown_calling_ae_rejected_and_logged_when_not_allowed(dicom_server, settings, caplog):
    settings.DICOM_UNKNOWN_AE_FROM = []
    DicomNode.objects.create(ae_title="KNOWN", host="127.0.0.1")
    proc = echoscu(dicom_server, aet="STRANGER")
    assert proc.returncode != 0
    assert "Association Rejected" in proc.stdout + proc.stderr
    assert "Calling AE Title Not Recognized" in proc.stdout + proc.stderr
    rejected = [r for r in caplog.records if r.getMessage() == "association rejected: unknown calling AE"]
    assert rejected and rejected[0].calling_ae_title == "STRANGER"
    assert echoscu(dicom_server, aet="KNOWN").returncode == 0
    # a disabled node is unknown
    DicomNode.objects.filter(ae_title="KNOWN").update(enabled=False)
    assert echoscu(dicom_server, aet="KNOWN").returncode != 0


def test_known_ae_from_another_host_rejected(dicom_server):
    DicomNode.objects.create(ae_title="CT1", host="10.99.99.99")
    proc = echoscu(dicom_server, aet="CT1")
    assert proc.returncode != 0 and "Association Rejected" in proc.stdout + proc.stderr
    DicomNode.objects.filter(ae_title="CT1").update(host="127.0.0.1")
    assert echoscu(dicom_server, aet="CT1").returncode == 0


def test_wrong_called_ae_rejected(dicom_server):
    proc = echoscu(dicom_server, aec="NOTUS")
    assert proc.returncode != 0 and "Association Rejected" in proc.stdout + proc.stderr


def test_per_ae_services(dicom_server):
    """A node without allow_mwl_find / allow_mpps gets those contexts refused at negotiation."""
    DicomNode.objects.create(ae_title="ECHOONLY", host="127.0.0.1", allow_mwl_find=False, allow_mpps=False)
    ae = _scu("ECHOONLY", (Verification, ModalityWorklistInformationFind, ModalityPerformedProcedureStep))
    assoc = ae.associate("127.0.0.1", port_of(dicom_server), ae_title="PACS")
    try:
        assert assoc.is_established
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        assert accepted == {str(Verification)}
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    proc, items = findscu(dicom_server, ["AccessionNumber="], __import__("pathlib").Path("/tmp") / "h2-noperm",
                          aet="ECHOONLY")
    assert proc.returncode != 0 or "No Acceptable Presentation Contexts" in proc.stdout + proc.stderr
    assert items == []


def test_malformed_identifier_refused_while_others_are_served(dicom_server, tmp_path):
    make_step(make_patient("DOE^JOHN", "P1"), accession="ACC1", modality="CT", start=local(2026, 11, 26, 9, 0))
    port = port_of(dicom_server)
    bad = _scu().associate("127.0.0.1", port, ae_title="PACS")
    good = _scu().associate("127.0.0.1", port, ae_title="PACS")
    try:
        ds = worklist_query()
        ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate = "26/11/2026"
        assert mwl_find(bad, ds) == [(0xA900, None)]
        two_items = worklist_query()
        two_items.ScheduledProcedureStepSequence.append(Dataset())
        assert mwl_find(bad, two_items) == [(0xA900, None)]
        # the same association and another one keep being served
        answers = mwl_find(good, worklist_query())
        assert [s for s, _ in answers] == [0xFF00, 0x0000]
        assert answers[0][1].AccessionNumber == "ACC1"
        assert [s for s, _ in mwl_find(bad, worklist_query())] == [0xFF00, 0x0000]
    finally:
        bad.release()
        good.release()
    # findscu with a malformed date: a failure status, and the server still answers afterwards
    proc, items = findscu(dicom_server, ["(0040,0100)[0].ScheduledProcedureStepStartDate=2026-11", "PatientName="],
                          tmp_path, extra=["-v"])
    assert items == [] and "DataSetDoesNotMatchSOPClass" in proc.stdout + proc.stderr  # 0xA900
    assert echoscu(dicom_server).returncode == 0


def test_twenty_concurrent_associations(dicom_server):
    for n in range(20):
        make_step(make_patient(f"PATIENT^{n:02d}", f"C{n:02d}"), accession=f"CC{n:02d}", modality="CT",
                  start=local(2026, 11, 26, 8, n))
    port = port_of(dicom_server)
    barrier = threading.Barrier(20)
    results: dict[int, object] = {}

    def client(n):
        ae = _scu(f"MOD{n:02d}")
        try:
            barrier.wait(timeout=30)
            assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
            if not assoc.is_established:
                results[n] = "not established"
                return
            answers = mwl_find(assoc, worklist_query())
            assoc.release()
            results[n] = sorted(i.AccessionNumber for s, i in answers if s == 0xFF00), answers[-1][0]
        except Exception as exc:  # noqa: BLE001
            results[n] = repr(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    expected = (sorted(f"CC{n:02d}" for n in range(20)), 0x0000)
    assert results == {n: expected for n in range(20)}


def test_association_limit(dicom_server, settings):
    """Beyond DICOM_MAX_ASSOCIATIONS: rejected transient (local limit exceeded); the others unaffected."""
    dicom_server.maximum_associations = 2
    port = port_of(dicom_server)
    held = [_scu().associate("127.0.0.1", port, ae_title="PACS") for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        extra = _scu().associate("127.0.0.1", port, ae_title="PACS")
        assert extra.is_rejected
        assert all(a.send_c_echo().Status == 0 for a in held)
    finally:
        for a in held:
            a.release()


def test_undecodable_identifier_bytes_answered_a900(dicom_server):
    """Identifier bytes that are no dataset (a sequence never closed): 0xA900, association kept."""
    from io import BytesIO

    from pynetdicom.dimse_primitives import C_FIND

    assoc = _scu().associate("127.0.0.1", port_of(dicom_server), ae_title="PACS")
    try:
        cx = [c for c in assoc.accepted_contexts if c.abstract_syntax == ModalityWorklistInformationFind
              and c.transfer_syntax[0] == "1.2.840.10008.1.2"][0]
        req = C_FIND()
        req.MessageID = 7
        req.AffectedSOPClassUID = ModalityWorklistInformationFind
        req.Priority = 2
        # implicit VR: ScheduledProcedureStepSequence and its item of undefined length, never delimited
        req.Identifier = BytesIO(b"\x40\x00\x00\x01\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff"
                                 b"\x08\x00\x60\x00\x02\x00\x00\x00CT")
        assoc._reactor_checkpoint.clear()  # as pynetdicom's own send_* do: keep the reactor off the queue
        while not assoc._is_paused:
            time.sleep(0.0001)
        try:
            assoc.dimse.send_msg(req, cx.context_id)
            _, rsp = assoc.dimse.get_msg(block=True)
        finally:
            assoc._reactor_checkpoint.set()
            # Let the reactor resume before the C-ECHO pauses it again: until its thread wakes it
            # still reads as paused, and the echo's answer would reach it as unexpected.
            deadline = time.monotonic() + 10
            while assoc._is_paused and time.monotonic() < deadline:
                time.sleep(0.0001)
        assert rsp is not None and rsp.Status == 0xA900
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
