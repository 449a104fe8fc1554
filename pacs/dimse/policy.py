"""Association policy: who may associate, from where, and for which services (PS3.8 7.1.1, 9.3.4).

On A-ASSOCIATE-RQ (``check``, called by ``pacs.dimse.acceptor``) the calling AE title is looked up among the enabled
``DicomNode`` rows (the one lookup; DICOM_NODES is written into them, ``pacs.services.peers``):

- a node, calling from its ``host`` (address, CIDR network or host name): accepted; the
  presentation contexts of the services it may not use (``SERVICE_FLAGS``) are removed from
  what this association accepts, so they are refused at negotiation ("abstract syntax not
  supported", PS3.8 9.3.3.2); a node that may query/retrieve but not store keeps the storage
  contexts with the engine as their SCU only (C-GET sub-operations, PS3.4 C.4.3);
- a node calling from any other address (or a node without a host): A-ASSOCIATE-RJ
  rejected-permanent, service user, "calling AE title not recognized" (PS3.8 9.3.4);
- a node with a ``certificate_name``: besides its host, the association must come over the
  DICOM TLS port (PS3.15 B.9) with a client certificate, verified against TLS_CA_CERTIFICATES
  during the handshake, whose CN or a DNS/IP subject alternative name is that name; else
  rejected as above (from the clear port too).  The AE title alone is not an identity: the
  certificate binds it.  Nodes without a certificate name follow the host rule on both ports;
- no node, from an address in DICOM_UNKNOWN_AE_FROM (the loopback by default): accepted with
  every service, on either port.  A verified certificate admits no unknown AE by itself: it
  proves who holds it, not what it may do; what a peer may do is declared on its node;
- no node, from elsewhere: rejected as above.

Each refusal is logged (AE title and address only) and counted per source address
(``pacs.services.peers.record_refusal``, written on a database thread so that it never delays
the answer); the operator's console reads the count.  It is also a Security Alert on the audit
trail (``pacs.auditing.node_refused``, queued for the audit writer thread).  The node found is kept on the
association (``node_of``) for the handlers (e.g. the MWL station filter).  The wrong called
AE title is refused by the acceptor.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import DatabaseError
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from pacs import auditing
from pacs.dimse import db
from pacs.dimse.acceptor import Rejected
from pacs.models import DicomNode, DicomRefusal
from pacs.services import peers
from project.peers import address_matches, certificate_matches, in_networks

log = logging.getLogger("pacs.dimse.policy")

REJECTED_PERMANENT = 0x01
REJECTED_TRANSIENT = 0x02
SOURCE_SERVICE_USER = 0x01
SOURCE_PROVIDER_PRESENTATION = 0x03
CALLING_AE_NOT_RECOGNISED = 0x03
TEMPORARY_CONGESTION = 0x01

# Which DicomNode flag a SOP class needs; any other SOP class (the storage SOP classes) needs allow_store.
SERVICE_FLAGS = {
    str(Verification): "allow_echo",
    str(ModalityWorklistInformationFind): "allow_mwl_find",
    str(ModalityPerformedProcedureStep): "allow_mpps",
    str(StorageCommitmentPushModel): "allow_storage_commitment",
    **{str(uid): "allow_query_retrieve" for uid in (
        PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelMove,
        PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelGet)},
}
_ATTR = "pacs_node"


def service_flag(abstract_syntax: str) -> str:
    return SERVICE_FLAGS.get(str(abstract_syntax), "allow_store")


def node_of(assoc) -> DicomNode | None:
    return getattr(assoc, _ATTR, None)


def _node(ae_title: str) -> DicomNode | None:
    """The enabled node with this AE title (one indexed lookup per association; raw SQL: the
    ORM's query building was half of its cost)."""
    rows = list(DicomNode.objects.raw(
        f"SELECT * FROM {DicomNode._meta.db_table} WHERE ae_title = %s AND enabled ORDER BY id LIMIT 1", [ae_title]))
    return rows[0] if rows else None


def _refuse(calling: str, address: str, reason: str, message: str, *, called: str = "", **extra) -> None:
    """Log, count, put on the audit trail and reject.  The count is written on a database thread without being waited
    for (``db.run_later`` logs a failure; counting never changes the answer); it queues behind
    the node lookups that each refused association waits for, so a flood of refusals cannot
    pile up writes faster than they are done."""
    log.warning(message, extra={"calling_ae_title": calling, "peer": address, "event": "dicom.association.rejected",
                                **extra})
    try:
        db.run_later(peers.record_refusal, address, reason, calling)
    except Exception as exc:  # noqa: BLE001 - the pool is stopping: not counted, still refused
        log.warning("dicom refusal not counted", extra={"peer": address, "error": str(exc)[:200]})
    try:  # the audit trail's Security Alert (PS3.15 A.5.3.11), by its writer thread
        auditing.node_refused(calling, address, reason, called_ae_title=called)
    except Exception as exc:  # noqa: BLE001 - recorded or not, the association is refused
        log.warning("dicom refusal not recorded on the audit trail", extra={"peer": address, "error": str(exc)[:200]})
    raise Rejected(REJECTED_PERMANENT, SOURCE_SERVICE_USER, CALLING_AE_NOT_RECOGNISED)


def _has_certificate(assoc, name: str) -> bool:
    """Whether the association came over TLS with a verified client certificate named ``name``."""
    certificate = getattr(assoc, "peer_certificate", None)
    return certificate is not None and certificate_matches(name, certificate.names())


def check(assoc) -> None:
    """A-ASSOCIATE-RQ: accept, narrow the services, or reject (``Rejected``) the association."""
    calling = assoc.requestor.ae_title
    address = assoc.requestor.address
    called = getattr(assoc.server, "ae_title", "")
    try:
        node = db.run(_node, calling)
    except DatabaseError as exc:
        log.error("association refused: node lookup failed", extra={"calling_ae_title": calling, "error": str(exc)})
        raise Rejected(REJECTED_TRANSIENT, SOURCE_PROVIDER_PRESENTATION, TEMPORARY_CONGESTION) from None
    if node is None:
        if not in_networks(address, settings.DICOM_UNKNOWN_AE_FROM):
            _refuse(calling, address, DicomRefusal.UNKNOWN_AE, "association rejected: unknown calling AE",
                    called=called)
        return
    if not address_matches(node.host, address):
        _refuse(calling, address, DicomRefusal.UNEXPECTED_ADDRESS,
                "association rejected: calling AE from an unexpected host", called=called, expected_host=node.host)
    if node.certificate_name and not _has_certificate(assoc, node.certificate_name):
        _refuse(calling, address, DicomRefusal.CERTIFICATE,
                "association rejected: calling AE without its TLS certificate", called=called,
                over_tls=getattr(assoc, "over_tls", False))
    setattr(assoc, _ATTR, node)
    allowed, scu_only = [], set()
    for cx in assoc.supported_contexts:
        flag = service_flag(cx.abstract_syntax)
        if getattr(node, flag):
            allowed.append(cx)
        elif flag == "allow_store" and node.allow_query_retrieve:
            # A node that may retrieve by C-GET but not store: the storage contexts carry the
            # engine's C-STORE sub-operations to it, never its own C-STOREs to the engine.
            allowed.append(cx)
            scu_only.add(str(cx.abstract_syntax))
    if len(allowed) != len(assoc.supported_contexts):
        assoc.supported_contexts = allowed
    if scu_only:
        assoc.scu_only = frozenset(scu_only)
