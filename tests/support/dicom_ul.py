"""A raw client of the engine's DICOM upper layer (PS3.8 section 9): A-ASSOCIATE-RQ PDUs built
with pynetdicom, read with the engine's own ``pacs.dimse.ul`` codec, for the tests that send what
no well-behaved SCU sends (half PDUs, silent peers, unexpected PDUs)."""

from __future__ import annotations

import socket

from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification

from pacs.dimse import ul
from tests.support.dicom import port_of


def associate_rq(called="PACS", calling="MOD1", contexts=((Verification, "1.2.840.10008.1.2"),), version=1) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    cxs = []
    for n, (abstract, syntax) in enumerate(contexts):
        cx = build_context(abstract, [syntax])
        cx.context_id = 2 * n + 1
        cxs.append(cx)
    primitive.presentation_context_definition_list = cxs
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    primitive.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    pdu.protocol_version = version
    return pdu.encode()


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port_of(server)), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def associate(server, **kwargs) -> socket.socket:
    sock = connect(server)
    sock.sendall(associate_rq(**kwargs))
    pdu_type, body = ul.read_pdu(sock, 0)
    assert pdu_type == ul.A_ASSOCIATE_AC
    return sock


def answer(sock) -> tuple[int, bytes]:
    try:
        return ul.read_pdu(sock, 0)
    except ul.ConnectionClosed:
        return 0, b""


def echo_rq(message_id=1, context_id=1) -> bytes:
    command = ul.encode_command({"AffectedSOPClassUID": Verification, "CommandField": 0x0030,
                                 "MessageID": message_id, "CommandDataSetType": 0x0101})
    return b"".join(ul.p_data_pdus(context_id, True, command, 0))


def response(sock) -> ul.Command:
    pdu_type, body = ul.read_pdu(sock, 0)
    assert pdu_type == ul.P_DATA_TF
    (_cx, is_command, is_last, data), = ul.iter_pdvs(body)
    assert is_command and is_last
    return ul.decode_command(bytes(data))
