"""The engine's DICOM association acceptor: one thread per association, blocking reads (PS3.8, PS3.7).

pynetdicom's acceptor runs three threads per association, two of which poll queues and the
socket every millisecond, and builds each DIMSE message through pydicom datasets: a fixed
CPU cost per association and per message that dominated both MWL queries and C-STORE ingest
(bench/RESULTS.md "MWL" and "Images and VNA routing").  This acceptor does the same protocol
work directly: the thread that accepted the connection reads each PDU with blocking
``recv_into``, decodes the command set itself (``pacs.dimse.ul``), calls the service handler
and writes the answer with one ``sendall``.  It still uses pynetdicom for what is negotiated once per association (the
A-ASSOCIATE PDUs, presentation context and role negotiation: ``negotiate_as_acceptor``) and
pydicom for the data sets.

Behaviour (listed in docs/dicom-conformance.md):

- Before association: connections that have not yet sent their whole A-ASSOCIATE-RQ are
  capped per source address (more are refused, A-ASSOCIATE-RJ transient) and in all (the
  oldest is closed); the A-ASSOCIATE-RQ must be whole within the ACSE timeout (ARTIM) and no
  larger than 64 KiB, else the connection is closed or aborted.
- A-ASSOCIATE-RQ: rejected (A-ASSOCIATE-RJ) for a wrong called AE title (permanent, service
  user, 0x07), an application context other than DICOM's (permanent, 0x02), a protocol
  version without bit 1 (permanent, ACSE, 0x02), more than ``maximum_associations``
  (transient, presentation, local limit exceeded), and whatever ``pacs.dimse.policy`` decides;
  else accepted with the contexts the calling AE may use.  ACSE timeout while waiting for it.
- P-DATA-TF: the command set, then the data set if any, per presentation context; a PDV on a
  context not accepted, a malformed PDU or command set, a PDU beyond its bound (known from its
  header), a PDV after the end of a message, or a message not whole within the DIMSE timeout
  aborts (A-ABORT, provider).  A data set other than a C-STORE's beyond
  ``maximum_dataset_size`` is read, dropped and answered with a failure status; so is a
  request whose handler raises.
- C-ECHO, C-FIND (with C-CANCEL read between answers), C-STORE (data set streamed to a file
  in the store's incoming directory, never held in memory, its SHA-256 computed on the way),
  N-CREATE, N-SET, N-EVENT-REPORT:
  to the service handlers of ``pacs.dimse.server``; a command no handler serves on that
  context is answered with its response and 0x0211 (unrecognized operation).
- A-RELEASE-RQ answered A-RELEASE-RP; A-ABORT or a closed connection ends the association;
  no PDU within the network timeout aborts it.
- With ``ssl_context`` (the DICOM TLS port, PS3.15 B.9 BCP 195 profile): every connection is a
  TLS server connection whose handshake must end within the same ACSE timeout as the
  A-ASSOCIATE-RQ that follows it (so a peer that never finishes the handshake, or speaks clear
  DICOM to this port, is closed by then); a failed handshake (no, untrusted or expired client
  certificate when one is required) closes the connection before any DICOM is read.  The
  verified client certificate is on the association (``peer_certificate``) for the policy.
"""

from __future__ import annotations

import io
import logging
import os
import select
import socket
import socketserver
import ssl
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from typing import NamedTuple

from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import decode as decode_dataset
from pynetdicom.dsutils import encode as encode_dataset
from pynetdicom.pdu import A_ASSOCIATE_AC as AC_PDU
from pynetdicom.pdu import A_ASSOCIATE_RJ as RJ_PDU
from pynetdicom.pdu import A_ASSOCIATE_RQ as RQ_PDU
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import negotiate_as_acceptor

from pacs import storage
from pacs.dimse import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, ul
from project import tls

log = logging.getLogger("pacs.dimse.acceptor")

APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"
UNRECOGNIZED_OPERATION = 0x0211
# How long the acceptor waits for the requestor to close after A-RELEASE-RP (ARTIM, PS3.8 9.1.5).
ARTIM_SECONDS = 5.0
# How much of a C-STORE data set is also kept in memory: the header, read by the handler
# without opening the file again (pacs.dimse.store.read_attributes).
HEAD_BYTES = 64 * 1024

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_APPLICATION_CONTEXT = (0x01, 0x01, 0x02)
REJECT_PROTOCOL_VERSION = (0x01, 0x02, 0x02)
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)
REFUSAL_PDU = ul.pdu(ul.A_ASSOCIATE_RJ, bytes((0, *REJECT_LOCAL_LIMIT)))

# The failure status of a service whose handler raised or gave no answer: C-STORE "cannot
# understand" (PS3.4 B.2.3), C-FIND "unable to process" (PS3.4 C.4.1.1.4), otherwise
# "processing failure" (PS3.7 C.4.2); C-MOVE and C-GET "unable to process" (PS3.4 C.4.2.1.5, C.4.3.1.4).
_FAILURE_STATUS = {"C-STORE": 0xC000, "C-FIND": 0xC000, "C-MOVE": 0xC000, "C-GET": 0xC000}
PROCESSING_FAILURE = 0x0110
# The status of a request whose data set exceeds the bound: C-FIND "out of resources"
# (PS3.4 C.4.1.1.4), otherwise "resource limitation" (PS3.7 C.4.2).
_TOO_LARGE_STATUS = {"C-FIND": 0xA700}
RESOURCE_LIMITATION = 0x0213
# Connections refused or closed before association are logged at most this often (seconds),
# with their count: a flood of them must not become a flood of log lines.
REFUSAL_LOG_INTERVAL = 10.0

_RESPONSE_OF = {
    "C-ECHO": 0x8030, "C-FIND": 0x8020, "C-STORE": 0x8001, "C-GET": 0x8010, "C-MOVE": 0x8021,
    "N-EVENT-REPORT": 0x8100, "N-GET": 0x8110, "N-SET": 0x8120, "N-ACTION": 0x8130,
    "N-CREATE": 0x8140, "N-DELETE": 0x8150,
}
# The names a handler reads a request's data set by, as pynetdicom's events give them
# (C-FIND identifier, N-CREATE attribute list, N-SET modification list, N-EVENT-REPORT event
# information, N-ACTION action information; PS3.7 9.1.2, 10.1).
# The services answered with pending responses before the final one (PS3.7 9.1.2-9.1.4).
_PENDING_SERVICES = frozenset({"C-FIND", "C-GET", "C-MOVE"})
_DATA_SET_NAMES = frozenset({"identifier", "attribute_list", "modification_list", "event_information",
                             "action_information"})


def failure_status(command_name: str) -> int:
    """The status that answers a request whose handler raised or gave no answer."""
    return _FAILURE_STATUS.get(command_name, PROCESSING_FAILURE)


class Context(NamedTuple):
    """An accepted presentation context (as pynetdicom's ``PresentationContextTuple``), with the
    roles this acceptor took on it (PS3.7 D.3.3.4): ``as_scp`` serves the requestor's requests,
    ``as_scu`` may send its own (C-STORE sub-operations of a C-GET)."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    as_scu: bool = False
    as_scp: bool = True


class Rejected(Exception):
    """Raised by an association policy to refuse an A-ASSOCIATE-RQ: (result, source, diagnostic)."""

    def __init__(self, result: int, source: int, diagnostic: int):
        super().__init__(f"rejected {result}/{source}/{diagnostic}")
        self.rsd = (result, source, diagnostic)


class Aborted(Exception):
    """The association ended by A-ABORT (either side) or by the connection closing."""


class DataSetTooLarge(Exception):
    """A request's data set (other than a C-STORE's) exceeded ``maximum_dataset_size``; it was
    read to its end and dropped, and the request is answered with a failure status."""


class ServiceUser:
    """The requestor as the handlers see it (the names pynetdicom's ``assoc.requestor`` has)."""

    def __init__(self, primitive: A_ASSOCIATE, address: str, port: int):
        self.primitive = primitive
        self.ae_title = (primitive.calling_ae_title or "").strip()
        self.address = address
        self.port = port
        self.maximum_length = _optional(lambda: primitive.maximum_length_received) or 0
        self.implementation_class_uid = _optional(lambda: primitive.implementation_class_uid)  # mandatory, often absent


def _optional(read):
    """A user information value the requestor may have left out (pynetdicom raises then)."""
    try:
        return read()
    except ValueError:
        return None


class Event:
    """What a service handler is given for one DIMSE request."""

    def __init__(self, assoc: Association, context, request: ul.Command, data: bytes | None = None,
                 dataset_path: str | None = None):
        self.assoc = assoc
        self.context = context
        self.request = request
        self._data = data
        self.dataset_path = dataset_path
        self.receive_error: OSError | None = None  # the data set could not be written (C-STORE)
        self.dataset_head = b""  # C-STORE: the first HEAD_BYTES of the data set, also in memory
        self._decoded = None

    def _dataset(self):
        if self._decoded is None:
            if self._data is None:
                raise ValueError("the request carries no data set")
            ts = self.context.transfer_syntax
            self._decoded = decode_dataset(
                io.BytesIO(self._data), ts == ImplicitVRLittleEndian, ts != ExplicitVRBigEndian,
                ts == DeflatedExplicitVRLittleEndian,
            )
        return self._decoded

    def __getattr__(self, name: str):
        if name in _DATA_SET_NAMES:
            return self._dataset()
        raise AttributeError(name)

    @property
    def is_cancelled(self) -> bool:
        return self.assoc.is_cancelled(self.request.MessageID)


class Association:
    """One accepted connection, served on the thread that accepted it."""

    def __init__(self, server: Acceptor, sock: socket.socket, address):
        self.server = server
        self.connection = sock  # the accepted TCP socket: the key of the pending count
        self.sock = sock  # what PDUs are read from and written to: the TLS socket on a TLS port
        self.over_tls = False
        self.peer_certificate: tls.PeerCertificate | None = None  # verified client certificate (TLS)
        self.address = address
        self.requestor: ServiceUser | None = None
        self.contexts: dict[int, object] = {}
        self.supported_contexts = server.contexts
        self.network_timeout = server.network_timeout
        self.is_established = False
        self._pending: deque = deque()  # PDUs read while looking for a C-CANCEL
        self._read_buffer = ul.ReadBuffer()  # P-DATA-TF bodies between requests, reused
        self._cancelled: set[int] = set()
        self._aborted = False
        self.holds_association_slot = False
        self.dataset_head = b""
        # Abstract syntaxes this acceptor may use only as SCU on this association (set by the
        # policy: storage for a node that may retrieve but not store).
        self.scu_only: frozenset[str] = frozenset()
        self._message_id = 0  # of the requests this acceptor sends (C-GET's C-STORE sub-operations)

    # ----------------------------------------------------------------- transport
    def send(self, data: bytes) -> None:
        self.sock.settimeout(self.network_timeout)  # a read may have left the rest of its deadline
        self.sock.sendall(data)

    def _next_pdu(self, deadline: ul.Deadline) -> tuple[int, bytearray | memoryview]:
        """The next PDU of a request.  Its body is valid until the next call: what is kept
        (a command set, a non-C-STORE data set) is copied out of it."""
        if self._pending:
            return self._pending.popleft()
        return ul.read_pdu(self.sock, self.server.maximum_pdu_size, deadline, reuse=self._read_buffer)

    def _await_message(self) -> ul.Deadline:
        """Between messages an association may be idle for the network timeout; from the
        first byte of a message on, the whole message (every PDU of it) must arrive within
        the DIMSE timeout, extended for a C-STORE data set by what arrives at the minimum
        receive rate (``ul.Deadline``)."""
        if not self._pending:
            if self.over_tls:  # no MSG_PEEK through TLS: wait for the socket, a closed one is seen by the read
                if not self._readable(self.network_timeout):
                    raise TimeoutError("no PDU within the network timeout")
            else:
                self.sock.settimeout(self.network_timeout)
                if not self.sock.recv(1, socket.MSG_PEEK):
                    raise ul.ConnectionClosed("connection closed between messages")
        return ul.Deadline(self.server.dimse_timeout)

    def _await_close(self) -> None:
        """After A-RELEASE-RP the requestor closes the connection (PS3.8 9.2, state Sta13: the
        acceptor waits, ARTIM running).  Closing first made pynetdicom's requestor take about
        10 ms more to finish its release."""
        deadline = ul.Deadline(min(self.server.acse_timeout, ARTIM_SECONDS))  # whatever still trickles in
        try:
            while True:
                self.sock.settimeout(deadline.remaining())
                if not self.sock.recv(4096):
                    return
        except OSError:  # TimeoutError included
            pass

    def _readable(self, timeout: float) -> bool:
        """Whether something can be read within ``timeout`` (0: now), counting what TLS has
        already decrypted and buffered."""
        if self.over_tls and self.sock.pending():
            return True
        poller = select.poll()  # not select(): no FD_SETSIZE bound on the descriptor's number
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(int(timeout * 1000)))

    def _start_tls(self, deadline: ul.Deadline) -> bool:
        """The TLS handshake as server (PS3.15 B.9), within ``deadline``.  False: it failed or
        timed out, the connection is to be closed."""
        try:
            self.sock = self.server.ssl_context.wrap_socket(self.connection, server_side=True,
                                                            do_handshake_on_connect=False)
            self.server.tls_started(self.connection, self.sock)
            self.sock.settimeout(max(deadline.remaining(), 0.001))
            self.sock.do_handshake()
        except (ssl.SSLError, OSError) as exc:  # TimeoutError included
            reason = "timeout" if isinstance(exc, TimeoutError) else getattr(exc, "reason", None) or type(exc).__name__
            self.server.handshake_failed(self.address[0], str(reason)[:100])
            self._aborted = True
            return False
        self.over_tls = True
        self.peer_certificate = tls.peer_certificate(self.sock)
        return True

    def abort(self, reason: int = ul.REASON_NOT_SPECIFIED) -> None:
        try:
            self.send(ul.abort_pdu(ul.ABORT_SOURCE_PROVIDER, reason))
        except OSError:
            pass
        self._aborted = True
        self.is_established = False

    # ----------------------------------------------------------------- association set-up
    def _reject(self, rsd, reason: str) -> None:
        primitive = A_ASSOCIATE()
        primitive.result, primitive.result_source, primitive.diagnostic = rsd
        rj = RJ_PDU()
        rj.from_primitive(primitive)
        self.send(rj.encode())
        log.info("association rejected", extra={"calling_ae_title": self.requestor.ae_title if self.requestor else "",
                                                "peer": self.address[0], "reason": reason})

    def _negotiate(self, body: bytearray) -> bool:
        rq = RQ_PDU()
        try:
            rq.decode(bytes(ul.pdu(ul.A_ASSOCIATE_RQ, body)))
            primitive = rq.to_primitive()
        except Exception as exc:  # noqa: BLE001 - malformed request
            log.warning("A-ASSOCIATE-RQ cannot be decoded", extra={"peer": self.address[0], "error": str(exc)[:200]})
            self.abort(ul.REASON_INVALID_PARAMETER)
            return False
        self.requestor = ServiceUser(primitive, self.address[0], self.address[1])
        server = self.server
        if not (rq.protocol_version & 0x01):
            self._reject(REJECT_PROTOCOL_VERSION, "protocol version")
            return False
        if str(primitive.application_context_name) != APPLICATION_CONTEXT_NAME:
            self._reject(REJECT_APPLICATION_CONTEXT, "application context name")
            return False
        if (primitive.called_ae_title or "").strip() != server.ae_title:
            self._reject(REJECT_CALLED_AE, "called AE title")
            return False
        if not server.claim_association(self):
            self._reject(REJECT_LOCAL_LIMIT, "maximum associations")
            return False
        if server.policy is not None:
            try:
                server.policy(self)
            except Rejected as rejected:
                self._reject(rejected.rsd, "policy")
                return False
        roles = {}
        for item in primitive.user_information:
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation):
                roles[item.sop_class_uid] = (item.scu_role, item.scp_role)
        result, ac_roles = negotiate_as_acceptor(
            primitive.presentation_context_definition_list, self.supported_contexts, roles
        )
        if self.scu_only:
            ac_roles = self._restrict_to_scu(result, ac_roles)
        self.contexts = {
            cx.context_id: Context(cx.context_id, str(cx.abstract_syntax), str(cx.transfer_syntax[0]),
                                   bool(cx.as_scu), bool(cx.as_scp))
            for cx in result if cx.result == 0x00
        }
        ac = A_ASSOCIATE()
        ac.application_context_name = APPLICATION_CONTEXT_NAME
        ac.calling_ae_title = primitive.calling_ae_title
        ac.called_ae_title = primitive.called_ae_title
        ac.result = 0x00
        ac.result_source = 0x01
        ac.presentation_context_definition_results_list = result
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = server.maximum_pdu_size
        impl_uid = ImplementationClassUIDNotification()
        impl_uid.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        impl_name = ImplementationVersionNameNotification()
        impl_name.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ac.user_information = [max_length, impl_uid, impl_name, *ac_roles]
        pdu = AC_PDU()
        pdu.from_primitive(ac)
        self.send(pdu.encode())
        self.is_established = True
        return True

    def _restrict_to_scu(self, result, ac_roles):
        """The contexts of ``scu_only`` abstract syntaxes keep this acceptor as SCU alone: the
        SCP role is taken away (its SCP/SCU Role Selection reply says the requestor may not act
        as SCU, PS3.7 D.3.3.4), and a context left with no role is rejected (user rejection)."""
        for cx in result:
            if cx.result != 0x00 or str(cx.abstract_syntax) not in self.scu_only:
                continue
            cx._as_scp = False
            if not cx.as_scu:
                cx.result = 0x01
        for role in ac_roles:
            if str(role.sop_class_uid) in self.scu_only:
                role.scu_role = False
        return [role for role in ac_roles if role.scp_role or role.scu_role]

    # ----------------------------------------------------------------- DIMSE messages
    def _read_message(self):
        """The next request: ``(context, command, data_bytes_or_None, dataset_path_or_None,
        receive_error)``; None when the association was released.  A C-STORE data set that
        cannot be written (disk full) is read to its end and dropped, and the OSError is
        handed on as ``receive_error`` so that the handler answers with a failure status; so
        is any other data set beyond ``maximum_dataset_size`` (``DataSetTooLarge``).  A PDV
        after the last one of the message, in the same P-DATA-TF, is a protocol error: with
        no asynchronous operations window negotiated the requestor may not send its next
        request before this one is answered (PS3.7 D.3.3.3), so nothing can follow it."""
        command_bytes = bytearray()
        command = None
        context = None
        data = None
        sink = None  # [file, path, first HEAD_BYTES] for C-STORE
        receive_error = None
        message = None  # the whole request, once its last PDV has been read
        deadline = self._await_message()
        try:
            while message is None:
                pdu_type, body = self._next_pdu(deadline)
                if pdu_type == ul.A_RELEASE_RQ:
                    if command is not None or command_bytes:
                        raise ul.ProtocolError("A-RELEASE-RQ inside a DIMSE message", ul.REASON_UNEXPECTED_PDU)
                    self.send(ul.RELEASE_RP)
                    self.is_established = False
                    self._await_close()
                    return None
                if pdu_type == ul.A_ABORT:
                    raise Aborted("A-ABORT from the peer")
                if pdu_type != ul.P_DATA_TF:
                    raise ul.ProtocolError(f"unexpected PDU 0x{pdu_type:02X}", ul.REASON_UNEXPECTED_PDU)
                for context_id, is_command, is_last, fragment in ul.iter_pdvs(body):
                    if message is not None:
                        raise ul.ProtocolError("PDV after the end of a message", ul.REASON_UNEXPECTED_PDU)
                    if context is None:
                        context = self.contexts.get(context_id)
                        if context is None:
                            raise ul.ProtocolError(f"PDV on presentation context {context_id}, not accepted")
                    elif context.context_id != context_id:
                        raise ul.ProtocolError("PDVs of one message on two presentation contexts")
                    if is_command:
                        if command is not None:
                            raise ul.ProtocolError("command fragment after the command set")
                        if len(command_bytes) + len(fragment) > ul.COMMAND_SET_MAX:
                            raise ul.ProtocolError("command set beyond its bound")
                        command_bytes += fragment
                        if is_last:
                            command = ul.decode_command(command_bytes)
                            if not command.has_data_set:
                                message = (context, command, None, None, None)
                            elif command.CommandField == 0x0001:
                                deadline.min_rate = self.server.min_receive_rate
                                try:
                                    sink = self._open_sink(command, context)
                                except OSError as exc:
                                    receive_error = exc
                            else:
                                data = bytearray()
                        continue
                    if command is None:
                        raise ul.ProtocolError("data set fragment before the command set")
                    if sink is not None:
                        if len(sink[2]) < HEAD_BYTES:
                            sink[2] += fragment[:HEAD_BYTES - len(sink[2])]
                        try:
                            sink[0].write(fragment)
                            storage.start_writeback(sink[0].fileno())
                        except OSError as exc:
                            receive_error = exc
                            _discard(sink)
                            sink = None
                    elif data is not None:
                        if len(data) + len(fragment) > self.server.maximum_dataset_size:
                            data = None  # the rest is read and dropped
                            receive_error = DataSetTooLarge(f"data set beyond {self.server.maximum_dataset_size} bytes")
                        else:
                            data += fragment
                    if is_last:
                        message = self._received(context, command, data, sink, receive_error)
                        sink = None
            return message
        except BaseException:
            if sink is not None:
                _discard(sink)
            if message is not None:
                _remove(message[3])
            raise

    def _received(self, context, command: ul.Command, data, sink, receive_error):
        """The request whose last data set fragment has just been read (see ``_read_message``)."""
        if sink is not None:
            path, self.dataset_head = sink[1], bytes(sink[2])
            try:
                sink[0].close()
            except OSError as exc:
                receive_error, path = exc, None
                _discard(sink)
            return context, command, None, path, receive_error
        if receive_error is not None:
            return context, command, None, None, receive_error
        return context, command, bytes(data), None, None

    def _open_sink(self, command: ul.Command, context):
        """A C-STORE data set goes to a new file in the store's incoming directory, behind a
        zero preamble and the File Meta Information (PS3.10 7.1) built from the command."""
        meta = ul.file_meta(command.AffectedSOPClassUID or "", command.AffectedSOPInstanceUID or "",
                            context.transfer_syntax, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME,
                            self.requestor.ae_title)
        path = str(storage.incoming_dir() / f"{uuid.uuid4().hex}{storage.RECEIVED_SUFFIX}")
        # Unbuffered: each PDV fragment is one write() (no 1 MiB buffer to allocate per file).
        fh = open(path, "wb", buffering=0)  # noqa: SIM115 - closed by _read_message
        try:
            fh.write(meta)
        except BaseException:
            fh.close()
            _remove(path)
            raise
        return [fh, path, bytearray()]

    def is_cancelled(self, message_id) -> bool:
        """Has the peer sent C-CANCEL for ``message_id`` (or aborted)?  Reads what has arrived
        without waiting; another PDU is kept for later (PS3.7 9.3.2.3), and no more is read
        while one is kept, so that a peer cannot make the acceptor buffer what it sends."""
        if self._aborted:
            return True
        try:
            while not self._pending and self._readable(0):
                pdu_type, body = ul.read_pdu(self.sock, self.server.maximum_pdu_size,
                                             ul.Deadline(self.server.dimse_timeout))
                if pdu_type == ul.A_ABORT:
                    self._aborted = True
                    return True
                if pdu_type == ul.P_DATA_TF:
                    pdvs = list(ul.iter_pdvs(body))
                    if len(pdvs) == 1 and pdvs[0][1] and pdvs[0][2]:
                        command = ul.decode_command(pdvs[0][3])
                        if command.CommandField == 0x0FFF:
                            self._cancelled.add(command.MessageIDBeingRespondedTo)
                            continue
                self._pending.append((pdu_type, body))
        except (OSError, ul.ConnectionClosed, ul.ProtocolError):
            self._aborted = True
            return True
        return message_id in self._cancelled

    def storage_contexts(self, sop_class_uid: str) -> list[Context]:
        """The accepted contexts of ``sop_class_uid`` on which this acceptor may act as SCU."""
        return [cx for cx in self.contexts.values() if cx.abstract_syntax == sop_class_uid and cx.as_scu]

    def send_c_store(self, context: Context, data, *, sop_class_uid: str, sop_instance_uid: str,
                     data_set_offset: int = 0) -> int:
        """A C-STORE sub-operation of a C-GET on this association (PS3.4 C.4.3.3): the request
        (the data set of the stored file ``data`` from ``data_set_offset``, or encoded bytes),
        then the C-STORE-RSP's Status.  A C-CANCEL read meanwhile is kept for ``is_cancelled``;
        an A-ABORT raises ``Aborted``, no response within the DIMSE timeout ``TimeoutError``."""
        self._message_id = self._message_id % 0xFFFF + 1
        message_id = self._message_id
        command = ul.encode_command({
            "AffectedSOPClassUID": sop_class_uid, "CommandField": 0x0001, "MessageID": message_id,
            "Priority": 0x0000, "CommandDataSetType": 0x0000, "AffectedSOPInstanceUID": sop_instance_uid,
        })
        peer_max = self.requestor.maximum_length
        self.send(b"".join(ul.p_data_pdus(context.context_id, True, command, peer_max)))
        if isinstance(data, (bytes, bytearray)):
            self.send(b"".join(ul.p_data_pdus(context.context_id, False, bytes(data), peer_max)))
        else:
            room = (peer_max - 6) if peer_max else 1024 * 1024
            self.sock.settimeout(self.network_timeout)
            with open(data, "rb", buffering=0) as fh:
                ul.send_file_data_set(self.sock, fh, data_set_offset, context.context_id, room, name=str(data))
        return self._await_store_response(message_id)

    def _await_store_response(self, message_id: int) -> int:
        deadline = ul.Deadline(self.server.dimse_timeout)
        command_bytes = bytearray()
        while True:
            pdu_type, body = self._next_pdu(deadline)
            if pdu_type == ul.A_ABORT:
                self._aborted = True
                raise Aborted("A-ABORT from the peer")
            if pdu_type != ul.P_DATA_TF:
                raise ul.ProtocolError(f"unexpected PDU 0x{pdu_type:02X} during a C-GET", ul.REASON_UNEXPECTED_PDU)
            for _context_id, is_command, is_last, fragment in ul.iter_pdvs(body):
                if not is_command:
                    continue
                command_bytes += fragment
                if not is_last:
                    continue
                response = ul.decode_command(command_bytes)
                command_bytes = bytearray()
                if response.CommandField == 0x0FFF:
                    self._cancelled.add(response.MessageIDBeingRespondedTo)
                elif response.CommandField == 0x8001 and response.MessageIDBeingRespondedTo == message_id:
                    if response.Status is None:
                        raise ul.ProtocolError("C-STORE-RSP without Status")
                    return response.Status
                else:
                    raise ul.ProtocolError(f"unexpected command 0x{response.CommandField:04X} during a C-GET",
                                           ul.REASON_UNEXPECTED_PDU)

    def _respond(self, context, command: ul.Command, elements: dict, dataset=None) -> None:
        """One response: command set (and data set, encoded in the context's transfer syntax)."""
        name = command.name
        elements = {
            "AffectedSOPClassUID": command.AffectedSOPClassUID or command.RequestedSOPClassUID,
            "CommandField": _RESPONSE_OF.get(name, 0x8000 | (command.CommandField or 0)),
            "MessageIDBeingRespondedTo": command.MessageID,
            **elements,
        }
        payload = b""
        if isinstance(dataset, (bytes, bytearray)):
            payload = dataset  # already encoded in the context's transfer syntax
        elif dataset is not None:
            ts = context.transfer_syntax
            payload = encode_dataset(dataset, ts == ImplicitVRLittleEndian, ts != ExplicitVRBigEndian,
                                     ts == DeflatedExplicitVRLittleEndian)
            if payload is None:
                raise ValueError("response data set cannot be encoded")
        elements["CommandDataSetType"] = 0x0000 if dataset is not None else ul.NO_DATA_SET
        command_set = ul.encode_command(elements)
        pdus = ul.message_pdus(context.context_id, command_set, payload if dataset is not None else None,
                               self.requestor.maximum_length)
        self.send(b"".join(pdus))

    def _dispatch(self, context, command: ul.Command, data, dataset_path, receive_error) -> None:
        name = command.name
        if name == "C-CANCEL":
            self._cancelled.add(command.MessageIDBeingRespondedTo)  # nothing running: ignored
            return
        handler = self.server.handlers.get(name)
        served_on = getattr(handler, "sop_classes", None)
        if handler is None or (served_on is not None and context.abstract_syntax not in served_on):
            log.warning("DIMSE request not served", extra={"calling_ae_title": self.requestor.ae_title,
                                                           "command": name})
            self._respond(context, command, {"Status": UNRECOGNIZED_OPERATION})
            _remove(dataset_path)
            return
        if isinstance(receive_error, DataSetTooLarge):
            log.warning("DIMSE request refused: data set too large", extra=self._log_extra(
                command=name, maximum_dataset_size=self.server.maximum_dataset_size))
            self._respond(context, command, {"Status": _TOO_LARGE_STATUS.get(name, RESOURCE_LIMITATION)})
            return
        if name == "C-STORE" and not context.as_scp:
            log.warning("C-STORE refused: this association may only retrieve", extra=self._log_extra())
            self._respond(context, command, {"Status": UNRECOGNIZED_OPERATION,
                                             "AffectedSOPInstanceUID": command.AffectedSOPInstanceUID})
            _remove(dataset_path)
            return
        event = Event(self, context, command, data, dataset_path)
        event.receive_error = receive_error
        if dataset_path is not None:
            event.dataset_head, self.dataset_head = self.dataset_head, b""
        try:
            if name in _PENDING_SERVICES:
                self._serve_find(handler, event)
                return
            answer = self._call(handler, event)
        finally:
            if event.dataset_path is not None:
                _remove(event.dataset_path)  # left by the handler (it sets None when it took the file)
        status, dataset = (answer if isinstance(answer, tuple) else (answer, None))
        if status is None:
            status = failure_status(name)
        elements = ul.status_elements(status)
        if name in ("C-STORE", "N-CREATE", "N-EVENT-REPORT", "N-SET", "N-ACTION"):
            elements["AffectedSOPInstanceUID"] = command.AffectedSOPInstanceUID or command.RequestedSOPInstanceUID
        if name == "N-EVENT-REPORT":
            elements["EventTypeID"] = command.EventTypeID
        if name == "N-ACTION":
            elements["ActionTypeID"] = command.ActionTypeID
        if name not in ("N-CREATE", "N-SET", "N-ACTION", "N-EVENT-REPORT") or elements["Status"] & 0xF000 in (0xA000, 0xC000):
            dataset = None
        self._respond(context, command, elements, dataset)

    def _call(self, handler, event: Event, answers=None):
        """The handler's answer (or the next of a C-FIND generator's ``answers``); an
        exception in it is logged and becomes the service's failure status, so that the
        association goes on (PS3.7 9.1: a failed operation is answered, not aborted)."""
        try:
            return handler(event) if answers is None else next(answers)
        except StopIteration:
            raise
        except Exception:  # noqa: BLE001 - any handler bug
            log.exception("service handler failed", extra=self._log_extra(command=event.request.name))
            return failure_status(event.request.name)

    def _serve_find(self, handler, event: Event) -> None:
        """C-FIND, C-GET, C-MOVE: the handler yields ``(status, identifier)`` answers, pending
        ones (0xFF00, 0xFF01) then one final.  A C-FIND's identifier goes with pending answers
        only; a C-GET's or C-MOVE's with the final one too (its Failed SOP Instance UID List,
        PS3.4 C.4.2.1.4.2), and their status data sets carry the sub-operation counts."""
        command = event.request
        final_identifier = command.name != "C-FIND"
        answers = self._call(handler, event)
        if isinstance(answers, int):  # the handler failed before it could yield
            answers = iter((answers,))
        while True:
            try:
                answer = self._call(handler, event, answers)
            except StopIteration:
                break
            status, identifier = answer if isinstance(answer, tuple) else (answer, None)
            elements = ul.status_elements(status)
            pending = elements["Status"] in (0xFF00, 0xFF01)
            if self._aborted:
                return
            self._respond(event.context, command, elements,
                          identifier if pending or final_identifier else None)
            if not pending:
                break
        self._cancelled.discard(command.MessageID)

    # ----------------------------------------------------------------- the thread
    def run(self) -> None:
        sock = self.sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            deadline = ul.Deadline(self.server.acse_timeout)  # the TLS handshake and the request, together
            if self.server.ssl_context is not None and not self._start_tls(deadline):
                return
            try:
                _, body = ul.read_pdu(self.sock, 0, deadline, expect=ul.A_ASSOCIATE_RQ)
            except TimeoutError:
                # ARTIM expired before a whole A-ASSOCIATE-RQ arrived: close the transport
                # connection (PS3.8 9.2.3, state Sta2, action AA-2).
                log.info("connection closed: no A-ASSOCIATE-RQ within the ACSE timeout", extra=self._log_extra())
                self._aborted = True
                return
            if not self.server.associating(self):
                return  # closed while waiting, to make room for a newer connection
            if not self._negotiate(body):
                return
            while not self._aborted:
                message = self._read_message()
                if message is None:
                    return
                self._dispatch(*message)
        except ul.ProtocolError as exc:
            log.warning("association aborted: protocol error", extra=self._log_extra(error=str(exc)))
            self.abort(exc.reason)
        except TimeoutError:
            log.warning("association aborted: timeout", extra=self._log_extra())
            self.abort()
        except (Aborted, ul.ConnectionClosed, ConnectionError):
            self._aborted = True
        except ssl.SSLError as exc:  # a TLS record that cannot be read, or the peer's TLS closed mid-way
            log.warning("association ended: TLS error", extra=self._log_extra(error=str(exc)[:100]))
            self._aborted = True
        except Exception:  # noqa: BLE001 - a handler bug ends this association only
            log.exception("association aborted: internal error", extra=self._log_extra())
            self.abort()
        finally:
            self.is_established = False
            self.server.association_ended(self)

    def _log_extra(self, **extra):
        return {"calling_ae_title": self.requestor.ae_title if self.requestor else "",
                "peer": self.address[0], **extra}


def _discard(sink) -> None:
    """Close (errors ignored: the disk may be full) and remove a partly written file."""
    try:
        sink[0].close()
    except OSError:
        pass
    _remove(sink[1])


def _remove(path) -> None:
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class _Tally:
    """Events counted by kind and handed out at most every REFUSAL_LOG_INTERVAL, so that a flood
    of refused connections becomes one log line per interval with its counts.  Not locked: the
    caller holds its lock."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.logged_at = -REFUSAL_LOG_INTERVAL

    def add(self, kind: str) -> dict | None:
        """Count one; the counts since the last time to log them, or None if it is too soon."""
        self.counts[kind] += 1
        now = time.monotonic()
        if now - self.logged_at < REFUSAL_LOG_INTERVAL:
            return None
        counts, self.counts, self.logged_at = dict(self.counts), Counter(), now
        return counts


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        assoc = Association(self.server, self.request, self.client_address)
        try:
            assoc.run()
        finally:
            if assoc.sock is not self.request:  # the TLS socket took over the connection's descriptor
                self.server.shutdown_request(assoc.sock)


class Acceptor(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """The listening socket; every connection is an ``Association`` on its own thread.

    ``contexts``: pynetdicom ``PresentationContext`` list (SCP side); ``handlers``: DIMSE
    command name ("C-FIND", ...) -> handler(event), served only on the contexts of the handler's
    ``sop_classes`` when it has that attribute; ``policy(assoc)``: may narrow
    ``assoc.supported_contexts`` or raise ``Rejected``; ``on_end(assoc)`` after each association;
    ``on_handshake_failure(address, reason, called_ae_title=...)`` after each failed TLS handshake
    (the audit trail's record of it: it must not block, the refusal path stays fast).

    Connections that have not yet sent their whole A-ASSOCIATE-RQ are capped apart from the
    associations: ``maximum_pending_per_address`` per source address (a further connection
    from it is refused at once) and ``maximum_pending`` in all (the oldest of them is closed to
    make room: it has waited longest, and a modality sends its request at once).  So idle or
    trickling sockets hold neither an association slot nor more than a bounded buffer, and a
    modality's association is never refused for them.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, *, ae_title: str, contexts, handlers: dict, policy=None, on_end=None,
                 on_handshake_failure=None,
                 maximum_associations: int = 32, maximum_pdu_size: int = 0, acse_timeout: float = 30,
                 network_timeout: float = 60, dimse_timeout: float = 60, maximum_pending: int = 64,
                 maximum_pending_per_address: int = 8, maximum_dataset_size: int = 2**20,
                 min_receive_rate: float = 65536, reuse_port: bool = False, ssl_context: ssl.SSLContext | None = None):
        self.ae_title = ae_title.strip()
        self.contexts = contexts
        self.handlers = handlers
        self.policy = policy
        self.on_end = on_end
        self.on_handshake_failure = on_handshake_failure
        self.maximum_associations = maximum_associations
        self.maximum_pdu_size = maximum_pdu_size
        self.acse_timeout = acse_timeout
        self.network_timeout = network_timeout
        self.dimse_timeout = dimse_timeout
        self.maximum_pending = maximum_pending
        self.maximum_pending_per_address = maximum_pending_per_address
        self.maximum_dataset_size = maximum_dataset_size
        self.min_receive_rate = min_receive_rate
        self.reuse_port = reuse_port
        self.ssl_context = ssl_context
        self._active = 0
        self._associations = 0
        self._active_lock = threading.Lock()
        self._pending: OrderedDict = OrderedDict()  # socket -> source address, oldest first
        self._pending_per_address: Counter = Counter()
        self._tls_of: dict = {}  # pending connection -> its TLS socket, once the handshake has begun
        self._refused = _Tally()  # "refused" / "closed" since the last log line
        self._handshake_failures = _Tally()  # reason -> TLS handshakes failed since the last log line
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        if self.reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def process_request(self, request, client_address):
        if not self._admit(request, client_address[0]):
            return
        with self._active_lock:
            self._active += 1
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread for it: the association never ran
            with self._active_lock:
                self._active -= 1
            self._leave_pending(request)
            raise

    # ----------------------------------------------------------------- connections before association
    def _admit(self, sock: socket.socket, address: str) -> bool:
        """Count a new connection among those awaiting their A-ASSOCIATE-RQ, or refuse it."""
        oldest = None
        with self._active_lock:
            if self._pending_per_address[address] >= self.maximum_pending_per_address:
                refused = True
            else:
                refused = False
                if len(self._pending) >= self.maximum_pending:
                    oldest, oldest_address = self._pending.popitem(last=False)
                    oldest = self._tls_of.pop(oldest, oldest)
                    self._forget_one(oldest_address)
                self._pending[sock] = address
                self._pending_per_address[address] += 1
        if oldest is not None:
            try:
                # its thread sees the connection closed and ends (the TCP shutdown, under TLS too)
                socket.socket.shutdown(oldest, socket.SHUT_RDWR)
            except OSError:
                pass
            self._count_refusal("closed", oldest_address)
        if refused:
            self._refuse(sock)
            self._count_refusal("refused", address)
        return not refused

    def _refuse(self, sock: socket.socket) -> None:
        """A-ASSOCIATE-RJ rejected-transient, "local limit exceeded" (PS3.8 9.3.4), sent
        without reading the request, then the connection is closed.  On a TLS port nothing
        is sent: no PDU can be read before the handshake."""
        if self.ssl_context is None:
            try:
                sock.setblocking(False)
                sock.send(REFUSAL_PDU)
            except OSError:
                pass
        self.shutdown_request(sock)

    def _count_refusal(self, kind: str, address: str) -> None:
        with self._active_lock:
            counts = self._refused.add(kind)
        if counts is None:
            return
        log.warning("connections refused or closed before association: too many waiting for an A-ASSOCIATE-RQ",
                    extra={"peer": address, **counts, "maximum_pending": self.maximum_pending,
                           "maximum_pending_per_address": self.maximum_pending_per_address})

    def handshake_failed(self, address: str, reason: str) -> None:
        """A TLS handshake failed (no, untrusted or expired certificate; not TLS; too slow):
        logged at most every REFUSAL_LOG_INTERVAL, with the count per reason since the last line;
        each one handed to ``on_handshake_failure``."""
        if self.on_handshake_failure is not None:
            try:
                self.on_handshake_failure(address, reason, called_ae_title=self.ae_title)
            except Exception:  # noqa: BLE001 - counted and logged all the same
                log.exception("TLS handshake failure hook failed")
        with self._active_lock:
            counts = self._handshake_failures.add(reason)
        if counts is None:
            return
        log.warning("connections closed: TLS handshake failed", extra={"peer": address, "last_error": reason,
                                                                       "failures": counts})

    def _forget_one(self, address: str) -> None:
        """One pending connection from ``address`` less (lock held); no entry is kept at 0."""
        self._pending_per_address[address] -= 1
        if not self._pending_per_address[address]:
            del self._pending_per_address[address]

    def tls_started(self, sock: socket.socket, tls_sock: ssl.SSLSocket) -> None:
        """The pending connection ``sock`` is now read through ``tls_sock`` (which owns its
        descriptor): closing it to make room must go through that."""
        with self._active_lock:
            if sock in self._pending:
                self._tls_of[sock] = tls_sock

    def _leave_pending(self, sock: socket.socket) -> bool:
        with self._active_lock:
            self._tls_of.pop(sock, None)
            address = self._pending.pop(sock, None)
            if address is None:
                return False
            self._forget_one(address)
            return True

    def associating(self, assoc: Association) -> bool:
        """The connection's A-ASSOCIATE-RQ has arrived: it no longer counts as pending.  False
        if it was closed meanwhile to make room for a newer connection."""
        return self._leave_pending(assoc.connection)

    def pending_count(self) -> int:
        return len(self._pending)

    # ----------------------------------------------------------------- associations
    def claim_association(self, assoc: Association) -> bool:
        """One of the ``maximum_associations`` slots for ``assoc``, if one is free."""
        with self._active_lock:
            if self._associations >= self.maximum_associations:
                return False
            self._associations += 1
        assoc.holds_association_slot = True
        return True

    def active_count(self) -> int:
        """Connections being served (associated or not)."""
        return self._active

    def association_count(self) -> int:
        return self._associations

    def association_ended(self, assoc: Association) -> None:
        self._leave_pending(assoc.connection)
        with self._active_lock:
            self._active -= 1
            if assoc.holds_association_slot:
                self._associations -= 1
                assoc.holds_association_slot = False
        if self.on_end is not None:
            try:
                self.on_end(assoc)
            except Exception:  # noqa: BLE001
                log.exception("association end hook failed")

    def start(self) -> Acceptor:
        """Serve on a background thread (tests, in-process benchmarks)."""
        thread = threading.Thread(target=self.serve_forever, name="dicom-acceptor", daemon=True)
        thread.start()
        return self

    def shutdown(self) -> None:
        super().shutdown()
        self.server_close()
