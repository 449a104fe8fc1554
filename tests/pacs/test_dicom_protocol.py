"""The engine's own DICOM upper layer (pacs.dimse.ul, acceptor, requestor) against bad input on
real sockets: malformed and unexpected PDUs, PDVs on contexts never accepted, commands no
service serves, a peer that goes silent; and the command set codec against pydicom's."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom import AE
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification

from pacs.dimse import requestor, ul
from tests.support.dicom import echoscu, port_of
from tests.support.dicom_ul import answer, associate, associate_rq, connect, echo_rq, response


def _still_serving(server) -> None:
    assert echoscu(server).returncode == 0


# --------------------------------------------------------------------------------- codec
def test_command_set_matches_pydicom_encoding():
    elements = {"AffectedSOPClassUID": "1.2.840.10008.5.1.4.31", "CommandField": 0x8020,
                "MessageIDBeingRespondedTo": 7, "CommandDataSetType": 0x0101, "Status": 0xA900,
                "ErrorComment": "bad key", "OffendingElement": [0x00100010]}
    ds = Dataset()
    ds.AffectedSOPClassUID = elements["AffectedSOPClassUID"]
    ds.CommandField = 0x8020
    ds.MessageIDBeingRespondedTo = 7
    ds.CommandDataSetType = 0x0101
    ds.Status = 0xA900
    ds.ErrorComment = "bad key"
    ds.OffendingElement = [0x00100010]
    body = DicomBytesIO()
    body.is_implicit_VR, body.is_little_endian = True, True
    write_dataset(body, ds)
    expected = struct.pack("<HHLL", 0, 0, 4, len(body.getvalue())) + body.getvalue()
    assert ul.encode_command(elements) == expected
    decoded = ul.decode_command(expected)
    assert decoded.Status == 0xA900 and decoded.ErrorComment == "bad key" and decoded.OffendingElement == [0x00100010]
    assert decoded.AffectedSOPClassUID == "1.2.840.10008.5.1.4.31" and decoded.MessageIDBeingRespondedTo == 7


@pytest.mark.parametrize("raw", [
    b"\x00\x00\x00\x01\x02\x00",                      # truncated element header
    b"\x08\x00\x00\x01\x02\x00\x00\x00\x30\x00",      # group 0008 in a command set
    b"\x00\x00\x00\x01\x10\x00\x00\x00\x30\x00",      # length beyond the end
    b"\x00\x00\x10\x01\x02\x00\x00\x00\x01\x00",      # no CommandField
])
def test_malformed_command_sets_are_refused(raw):
    with pytest.raises(ul.ProtocolError):
        ul.decode_command(raw)


def test_p_data_fragments_respect_the_peer_maximum():
    data = bytes(range(256)) * 100
    pdus = list(ul.p_data_pdus(3, False, data, 4096))
    assert all(len(p) - 6 <= 4096 for p in pdus)
    joined, flags = b"", []
    for raw in pdus:
        for cx, is_command, is_last, fragment in ul.iter_pdvs(bytearray(raw[6:])):
            assert cx == 3 and not is_command
            joined += bytes(fragment)
            flags.append(is_last)
    assert joined == data and flags[-1] and not any(flags[:-1])


# --------------------------------------------------------------------------------- acceptor
def test_wrong_called_ae_title_rejected(dicom_server):
    with connect(dicom_server) as sock:
        sock.sendall(associate_rq(called="NOTPACS"))
        pdu_type, body = ul.read_pdu(sock, 0)
        assert pdu_type == ul.A_ASSOCIATE_RJ
        rj = A_ASSOCIATE_RJ()
        rj.decode(ul.pdu(pdu_type, body))
        assert (rj.result, rj.source, rj.reason_diagnostic) == (0x01, 0x01, 0x07)


def test_unsupported_protocol_version_rejected(dicom_server):
    with connect(dicom_server) as sock:
        sock.sendall(associate_rq(version=2))
        pdu_type, body = ul.read_pdu(sock, 0)
        rj = A_ASSOCIATE_RJ()
        rj.decode(ul.pdu(pdu_type, body))
        assert (rj.result, rj.source, rj.reason_diagnostic) == (0x01, 0x02, 0x02)


def test_unknown_abstract_syntax_refused_in_the_accept(dicom_server):
    with connect(dicom_server) as sock:
        sock.sendall(associate_rq(contexts=[(Verification, "1.2.840.10008.1.2"), ("1.2.3.4.5", "1.2.840.10008.1.2")]))
        pdu_type, body = ul.read_pdu(sock, 0)
        ac = A_ASSOCIATE_AC()
        ac.decode(ul.pdu(pdu_type, body))
        results = {cx.context_id: cx.result for cx in ac.to_primitive().presentation_context_definition_results_list}
        assert results == {1: 0x00, 3: 0x03}  # accepted; abstract syntax not supported
        sock.sendall(echo_rq())
        assert response(sock).Status == 0x0000


@pytest.mark.parametrize("garbage", [
    b"\x09\x00\x00\x00\x00\x04abcd",                  # PDU type 9 does not exist
    b"\x01\x00\x00\x00\x00\x04abcd",                  # an A-ASSOCIATE-RQ that is no such thing
])
def test_garbage_instead_of_an_association_request_is_aborted(dicom_server, garbage):
    with connect(dicom_server) as sock:
        sock.sendall(garbage)
        pdu_type, _ = answer(sock)
        assert pdu_type in (ul.A_ABORT, 0)  # A-ABORT, then the connection is closed
        assert answer(sock)[0] == 0
    _still_serving(dicom_server)


def test_pdv_on_a_context_never_accepted_aborts(dicom_server):
    with associate(dicom_server) as sock:
        sock.sendall(echo_rq(context_id=5))
        pdu_type, body = answer(sock)
        assert pdu_type == ul.A_ABORT and body[2] == ul.ABORT_SOURCE_PROVIDER
    _still_serving(dicom_server)


def test_malformed_pdv_lengths_abort(dicom_server):
    with associate(dicom_server) as sock:
        sock.sendall(ul.pdu(ul.P_DATA_TF, struct.pack(">LBB", 500, 1, 3) + b"\x00" * 4))
        assert answer(sock)[0] == ul.A_ABORT
    _still_serving(dicom_server)


def test_pdu_longer_than_our_maximum_aborts_without_reading_it(dicom_server, settings):
    """A P-DATA-TF announcing more than the Maximum Length we accepted (DICOM_MAX_PDU): A-ABORT
    at once, nothing buffered; the server goes on serving."""
    with associate(dicom_server) as sock:
        sock.sendall(struct.pack(">BxL", ul.P_DATA_TF, settings.DICOM_MAX_PDU + 1024) + b"\x00" * 64)
        pdu_type, body = answer(sock)
        assert pdu_type == ul.A_ABORT and body[2] == ul.ABORT_SOURCE_PROVIDER
    _still_serving(dicom_server)


def test_command_no_service_serves_is_answered_unrecognized_operation(dicom_server):
    """C-GET on the Verification context: its response with 0x0211, and the association goes on."""
    with associate(dicom_server) as sock:
        command = ul.encode_command({"AffectedSOPClassUID": Verification, "CommandField": 0x0010,
                                     "MessageID": 3, "Priority": 0, "CommandDataSetType": 0x0101})
        sock.sendall(b"".join(ul.p_data_pdus(1, True, command, 0)))
        answer = response(sock)
        assert answer.CommandField == 0x8010 and answer.Status == 0x0211 and answer.MessageIDBeingRespondedTo == 3
        sock.sendall(echo_rq(message_id=4))
        assert response(sock).Status == 0x0000


def test_release_is_answered(dicom_server):
    with associate(dicom_server) as sock:
        sock.sendall(ul.pdu(ul.A_RELEASE_RQ, b"\x00" * 4))
        assert answer(sock)[0] == ul.A_RELEASE_RP


def test_silent_peer_is_aborted_after_the_network_timeout(transactional_db, settings):
    from pacs.dimse.server import start_server

    settings.DICOM_AE_TITLE = "PACS"
    settings.DICOM_NETWORK_TIMEOUT = 1.0
    server = start_server("127.0.0.1", 0)
    try:
        with associate(server) as sock:
            started = time.monotonic()
            assert answer(sock)[0] == ul.A_ABORT
            assert 0.8 < time.monotonic() - started < 5
    finally:
        server.shutdown()


def test_peer_closing_mid_message_frees_the_association(dicom_server):
    """Half a command, then the connection drops: the slot is given back."""
    with associate(dicom_server) as sock:
        raw = echo_rq()
        sock.sendall(raw[: len(raw) // 2])
    deadline = time.monotonic() + 5
    while dicom_server.active_count() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert dicom_server.active_count() == 0
    _still_serving(dicom_server)


# --------------------------------------------------------------------------------- requestor
def test_requestor_rejection_and_refusal_are_told_apart(dicom_server):
    with pytest.raises(requestor.AssociationRejected) as rejected:
        requestor.Association.request("127.0.0.1", port_of(dicom_server), calling_ae_title="PACS",
                                      called_ae_title="WRONG", contexts=[(Verification, "1.2.840.10008.1.2")])
    assert rejected.value.permanent
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(requestor.AssociationLost):
        requestor.Association.request("127.0.0.1", closed_port, calling_ae_title="PACS", called_ae_title="PACS",
                                      contexts=[(Verification, "1.2.840.10008.1.2")])


def test_pynetdicom_client_sees_the_accepted_contexts(dicom_server):
    """A third-party requestor: pynetdicom's SCU negotiates, echoes and finds, then releases."""
    ae = AE(ae_title="MOD1")
    ae.add_requested_context(Verification)
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port_of(dicom_server), ae_title="PACS")
    try:
        assert assoc.is_established
        assert {str(cx.abstract_syntax) for cx in assoc.accepted_contexts} == {Verification, ModalityWorklistInformationFind}
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    assert assoc.is_released


def test_a_message_fits_one_pdu_or_is_fragmented():
    command, data = b"C" * 100, b"D" * 300
    one = ul.message_pdus(1, command, data, 16384)
    assert len(one) == 1
    pdvs = list(ul.iter_pdvs(bytearray(one[0][6:])))
    assert [(cx, is_cmd, last, bytes(d)) for cx, is_cmd, last, d in pdvs] == [(1, True, True, command),
                                                                              (1, False, True, data)]
    split = ul.message_pdus(1, command, data, 256)
    assert len(split) >= 3 and all(len(p) - 6 <= 256 for p in split)
    assert ul.message_pdus(1, command, None, 0) == list(ul.p_data_pdus(1, True, command, 0))


@pytest.mark.parametrize("peer_max", [0, 1000, 16384])
def test_requestor_sends_a_file_as_pdus_within_the_peer_maximum(tmp_path, peer_max):
    """The data set of a stored file, sent in PDUs no longer than the peer allows, arrives whole."""
    body = bytes(range(256)) * 700  # 179,200 bytes of "data set"
    path = tmp_path / "f.dcm"
    path.write_bytes(ul.file_meta("1.2.3", "1.2.3.4", "1.2.840.10008.1.2.1", "1.2.5", "TEST") + body)
    left, right = socket.socketpair()
    try:
        assoc = requestor.Association(left, {}, peer_max, 5, 5)
        room = (peer_max - 6) if peer_max else requestor.UNLIMITED_SEND
        sender = threading.Thread(target=assoc._send_file, args=(path, 7, room))
        sender.start()
        received, last = b"", False
        while not last:
            pdu_type, pdu_body = ul.read_pdu(right, 0)
            assert pdu_type == ul.P_DATA_TF and (not peer_max or len(pdu_body) <= peer_max)
            for cx, is_command, is_last, data in ul.iter_pdvs(pdu_body):
                assert cx == 7 and not is_command
                received += bytes(data)
                last = is_last
        sender.join(5)
        assert received == body
    finally:
        left.close()
        right.close()


def test_c_store_cut_by_an_abort_leaves_nothing(engine, store_dir, tmp_path):
    """Half a data set, then A-ABORT: no file is left in the store, nothing is indexed, and the
    next association stores the same instance."""
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from pacs.models import Instance
    from tests.support.orthanc import make_instance

    ds = make_instance(study_instance_uid=generate_uid(), rows=128, columns=128)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "cut.dcm"
    dcmwrite(path, ds, enforce_file_format=True)
    pair = (str(ds.SOPClassUID), ExplicitVRLittleEndian)
    assoc = requestor.Association.request("127.0.0.1", port_of(engine), calling_ae_title="MODALITY",
                                          called_ae_title="PACS", contexts=[pair])
    context_id = assoc.accepted[pair]
    command = ul.encode_command({"AffectedSOPClassUID": pair[0], "CommandField": 0x0001, "MessageID": 1,
                                 "Priority": 0, "CommandDataSetType": 0x0000,
                                 "AffectedSOPInstanceUID": str(ds.SOPInstanceUID)})
    raw = path.read_bytes()
    data = raw[144 + int.from_bytes(raw[140:144], "little"):]
    assoc.sock.sendall(b"".join(ul.p_data_pdus(context_id, True, command, 0)))
    half = data[: len(data) // 2]
    assoc.sock.sendall(ul.pdu(ul.P_DATA_TF, struct.pack(">LBB", len(half) + 2, context_id, 0x00) + half))  # not last
    assoc.sock.sendall(ul.abort_pdu(ul.ABORT_SOURCE_USER))
    assoc.sock.close()
    deadline = time.monotonic() + 5
    while engine.active_count() and time.monotonic() < deadline:
        time.sleep(0.02)
    incoming = store_dir / ".incoming"
    assert not incoming.exists() or not any(incoming.iterdir())
    assert not [p for p in store_dir.rglob("*.dcm")]
    assert not Instance.objects.filter(sop_instance_uid=str(ds.SOPInstanceUID)).exists()
    with requestor.Association.request("127.0.0.1", port_of(engine), calling_ae_title="MODALITY",
                                       called_ae_title="PACS", contexts=[pair]) as again:
        assert again.send_c_store(path, sop_class_uid=pair[0], sop_instance_uid=str(ds.SOPInstanceUID),
                                  context_id=again.accepted[pair]) == 0x0000
    assert Instance.objects.filter(sop_instance_uid=str(ds.SOPInstanceUID)).exists()
