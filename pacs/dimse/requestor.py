"""The engine as association requestor for C-STORE (PS3.8 9.3, PS3.7 9.3.1) and N-ACTION
(PS3.7 10.3.4), on a blocking socket.

Used to send studies to a VNA (``pacs.scu``, ``VNA_DICOM_SENDER=engine``, the default) and to
ask it for storage commitment (whichever sender sent the study).
pynetdicom's SCU moves every PDU through its DUL thread and queues, and sends a fraction of
what dcmtk's storescu sends on the same link (bench/RESULTS.md "Images and VNA routing");
this one writes each P-DATA-TF straight from the file into the socket: the data set of a
stored file is read in pieces of the peer's maximum PDU length, behind one 12-byte header,
never decoded.  The A-ASSOCIATE PDUs are pynetdicom's classes, as in ``pacs.dimse.acceptor``;
the framing and command sets are ``pacs.dimse.ul``.

Over TLS (PS3.15 B.9, the BCP 195 profile) the TCP connection is wrapped before the
A-ASSOCIATE-RQ with the context the caller gives (``project.tls.client_context``: the VNA's
certificate verified, its host name checked).  A failed handshake is ``TLSFailed``; nothing
is ever sent in clear on a connection that was meant to be secure.
"""

from __future__ import annotations

import socket
import ssl
import struct

from pynetdicom.pdu import A_ASSOCIATE_AC as AC_PDU
from pynetdicom.pdu import A_ASSOCIATE_RJ as RJ_PDU
from pynetdicom.pdu import A_ASSOCIATE_RQ as RQ_PDU
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

from pacs.dimse import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, ul
from pacs.dimse.acceptor import APPLICATION_CONTEXT_NAME

# What we announce as our Maximum Length Received: responses are small.
OUR_MAXIMUM_PDU = 65536
# Our P-DATA-TF size when the peer announces no limit (0).
UNLIMITED_SEND = 1024 * 1024
# Response CommandField values (PS3.7 E.1-1 / E.2-1).
C_STORE_RSP = 0x8001
N_ACTION_RSP = 0x8130


class AssociationRejected(Exception):
    def __init__(self, result: int, source: int, diagnostic: int):
        super().__init__(f"A-ASSOCIATE-RJ result {result}, source {source}, reason {diagnostic}")
        self.result, self.source, self.diagnostic = result, source, diagnostic

    @property
    def permanent(self) -> bool:
        return self.result == 0x01


class AssociationLost(Exception):
    """Refused, aborted, closed or timed out: the peer may be back later."""


class TLSFailed(AssociationLost):
    """The TLS handshake failed (PS3.15 B.9); ``certificate`` when the peer's certificate did not
    verify (unknown CA, expired, wrong host name), which no retry mends."""

    def __init__(self, message: str, *, certificate: bool):
        super().__init__(message)
        self.certificate = certificate


def secure(sock: socket.socket, context: ssl.SSLContext, host: str) -> ssl.SSLSocket:
    """The TLS handshake on a connected socket, the peer's certificate checked against ``host``."""
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise TLSFailed(f"TLS: the peer's certificate was refused (certificate verify failed: {exc.verify_message})",
                        certificate=True) from exc
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        raise TLSFailed(f"TLS handshake failed: {exc}", certificate=False) from exc


def data_set_offset(fh) -> int:
    """Where the data set starts in a Part 10 file: after the preamble, 'DICM' and the File
    Meta Information (group 0002, explicit VR little endian; PS3.10 7.1)."""
    fh.seek(0)
    head = fh.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file")
    offset = 132
    while True:
        fh.seek(offset)
        element = fh.read(8)
        if len(element) < 8:
            return offset
        group, _elem = struct.unpack("<HH", element[:4])
        if group != 0x0002:
            return offset
        vr = element[4:6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV", b"SV", b"UV"):
            length = struct.unpack("<L", fh.read(4))[0]
            offset += 12 + length
        else:
            length = struct.unpack("<H", element[6:8])[0]
            offset += 8 + length


class Association:
    """One association we requested; use as a context manager (released on exit)."""

    def __init__(self, sock: socket.socket, contexts: dict[tuple[str, str], int], peer_max: int,
                 dimse_timeout: float, acse_timeout: float):
        self.sock = sock
        self.accepted = contexts  # (abstract syntax, transfer syntax) -> context ID
        self.peer_max = peer_max
        self.dimse_timeout = dimse_timeout
        self.acse_timeout = acse_timeout
        self._message_id = 0
        self.is_established = True

    # ------------------------------------------------------------------ set-up
    @classmethod
    def request(cls, host: str, port: int, *, calling_ae_title: str, called_ae_title: str,
                contexts: list[tuple[str, str]], acse_timeout: float = 30, dimse_timeout: float = 60,
                network_timeout: float = 60, tls: ssl.SSLContext | None = None) -> Association:
        """Open the association, proposing one presentation context per (SOP class, transfer syntax);
        over TLS when ``tls`` is given."""
        try:
            sock = socket.create_connection((host, int(port)), timeout=acse_timeout)
        except OSError as exc:
            raise AssociationLost(f"cannot connect: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            sock = secure(sock, tls, host)
        try:
            proposed = {}
            requested = []
            for n, (abstract, syntax) in enumerate(contexts):
                cx = build_context(abstract, [syntax])
                cx.context_id = 2 * n + 1
                requested.append(cx)
                proposed[cx.context_id] = (str(abstract), str(syntax))
            primitive = A_ASSOCIATE()
            primitive.application_context_name = APPLICATION_CONTEXT_NAME
            primitive.calling_ae_title = calling_ae_title
            primitive.called_ae_title = called_ae_title
            primitive.presentation_context_definition_list = requested
            max_length = MaximumLengthNotification()
            max_length.maximum_length_received = OUR_MAXIMUM_PDU
            impl_uid = ImplementationClassUIDNotification()
            impl_uid.implementation_class_uid = IMPLEMENTATION_CLASS_UID
            impl_name = ImplementationVersionNameNotification()
            impl_name.implementation_version_name = IMPLEMENTATION_VERSION_NAME
            primitive.user_information = [max_length, impl_uid, impl_name]
            rq = RQ_PDU()
            rq.from_primitive(primitive)
            sock.sendall(rq.encode())
            pdu_type, body = ul.read_pdu(sock, 0)
            raw = ul.pdu(pdu_type, body)
            if pdu_type == ul.A_ASSOCIATE_RJ:
                rj = RJ_PDU()
                rj.decode(raw)
                raise AssociationRejected(rj.result, rj.source, rj.reason_diagnostic)
            if pdu_type != ul.A_ASSOCIATE_AC:
                raise AssociationLost(f"association answered with PDU 0x{pdu_type:02X}")
            ac = AC_PDU()
            ac.decode(raw)
            answer = ac.to_primitive()
            accepted = {
                proposed[cx.context_id]: cx.context_id
                for cx in answer.presentation_context_definition_results_list
                if cx.result == 0x00 and cx.context_id in proposed
            }
            sock.settimeout(network_timeout)
            return cls(sock, accepted, answer.maximum_length_received or 0, dimse_timeout, acse_timeout)
        except (ul.ConnectionClosed, ul.ProtocolError, OSError) as exc:
            sock.close()
            raise AssociationLost(f"association not established: {exc}") from exc
        except BaseException:
            sock.close()
            raise

    def __enter__(self) -> Association:
        return self

    def __exit__(self, *exc) -> None:
        if self.is_established:
            self.release()
        self.sock.close()

    # ------------------------------------------------------------------ C-STORE
    def _next_message_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def send_c_store(self, path_or_bytes, *, sop_class_uid: str, sop_instance_uid: str, context_id: int,
                     move_originator: tuple[str, int] | None = None) -> int:
        """Send one instance (a stored Part 10 file, or an encoded data set as bytes) and
        return the response Status.  ``move_originator``: (AE title, Message ID) of the C-MOVE
        this C-STORE is a sub-operation of (PS3.7 9.3.1.1).  Raises AssociationLost if no
        response comes."""
        message_id = self._next_message_id()
        command = ul.encode_command({
            "AffectedSOPClassUID": sop_class_uid, "CommandField": 0x0001, "MessageID": message_id,
            "Priority": 0x0000, "CommandDataSetType": 0x0000, "AffectedSOPInstanceUID": sop_instance_uid,
            "MoveOriginatorApplicationEntityTitle": move_originator[0] if move_originator else None,
            "MoveOriginatorMessageID": move_originator[1] if move_originator else None,
        })
        room = (self.peer_max - 6) if self.peer_max else UNLIMITED_SEND
        try:
            self.sock.sendall(b"".join(ul.p_data_pdus(context_id, True, command, self.peer_max)))
            if isinstance(path_or_bytes, (bytes, bytearray)):
                for pdu in ul.p_data_pdus(context_id, False, bytes(path_or_bytes), self.peer_max):
                    self.sock.sendall(pdu)
            else:
                self._send_file(path_or_bytes, context_id, room)
            return self._read_response(message_id, C_STORE_RSP)
        except (ul.ConnectionClosed, ul.ProtocolError, OSError) as exc:
            self.is_established = False
            raise AssociationLost(f"association lost during C-STORE: {exc}") from exc

    # ------------------------------------------------------------------ N-ACTION
    def send_n_action(self, action_information: bytes, *, sop_class_uid: str, sop_instance_uid: str,
                      action_type_id: int, context_id: int) -> int:
        """N-ACTION-RQ (PS3.7 10.1.4) with its Action Information, an encoded data set in the
        context's transfer syntax; return the N-ACTION-RSP Status (a reply data set, if any, is
        not read).  Raises AssociationLost if no response comes."""
        message_id = self._next_message_id()
        command = ul.encode_command({
            "RequestedSOPClassUID": sop_class_uid, "CommandField": 0x0130, "MessageID": message_id,
            "CommandDataSetType": 0x0000, "RequestedSOPInstanceUID": sop_instance_uid,
            "ActionTypeID": action_type_id,
        })
        try:
            for pdu in ul.message_pdus(context_id, command, action_information, self.peer_max):
                self.sock.sendall(pdu)
            return self._read_response(message_id, N_ACTION_RSP)
        except (ul.ConnectionClosed, ul.ProtocolError, OSError) as exc:
            self.is_established = False
            raise AssociationLost(f"association lost during N-ACTION: {exc}") from exc

    def _send_file(self, path, context_id: int, room: int) -> None:
        """The data set of a Part 10 file as P-DATA-TF PDUs of ``room`` data bytes each."""
        with open(path, "rb", buffering=0) as fh:
            ul.send_file_data_set(self.sock, fh, data_set_offset(fh), context_id, room, name=str(path))

    def _read_response(self, message_id: int, command_field: int) -> int:
        """The Status of the response ``command_field`` to ``message_id``; data set PDVs skipped."""
        self.sock.settimeout(self.dimse_timeout)
        command_bytes = bytearray()
        while True:
            pdu_type, body = ul.read_pdu(self.sock, OUR_MAXIMUM_PDU)
            if pdu_type == ul.A_ABORT:
                self.is_established = False
                raise AssociationLost("A-ABORT from the peer")
            if pdu_type != ul.P_DATA_TF:
                raise ul.ProtocolError(f"unexpected PDU 0x{pdu_type:02X} while waiting for a response")
            for _cx, is_command, is_last, fragment in ul.iter_pdvs(body):
                if not is_command:
                    continue  # a C-STORE-RSP carries no data set; an N-ACTION reply is not needed
                command_bytes += fragment
                if is_last:
                    response = ul.decode_command(command_bytes)
                    command_bytes = bytearray()
                    if response.CommandField == command_field and response.MessageIDBeingRespondedTo == message_id:
                        if response.Status is None:
                            raise ul.ProtocolError(f"response 0x{command_field:04X} without Status")
                        return response.Status

    # ------------------------------------------------------------------ release
    def release(self) -> None:
        """A-RELEASE-RQ, wait for the RP (ACSE timeout); the connection is closed either way."""
        self.is_established = False
        try:
            self.sock.settimeout(self.acse_timeout)
            self.sock.sendall(ul.pdu(ul.A_RELEASE_RQ, b"\x00\x00\x00\x00"))
            while True:
                pdu_type, _body = ul.read_pdu(self.sock, OUR_MAXIMUM_PDU)
                if pdu_type in (ul.A_RELEASE_RP, ul.A_ABORT):
                    return
        except (ul.ConnectionClosed, ul.ProtocolError, OSError):
            return
        finally:
            self.sock.close()
