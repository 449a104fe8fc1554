"""Association policy: who may associate, and for which services (reliability D-01, D-02).

On A-ASSOCIATE-RQ (``check``, called by ``pacs.dimse.acceptor``) the calling AE title is looked up among the enabled
``DicomNode`` rows:

- unknown, and DICOM_ALLOW_UNKNOWN_AE off: A-ASSOCIATE-RJ rejected-permanent, service
  user, "calling AE title not recognised" (PS3.8 9.3.4), logged;
- known but with a ``host`` and calling from another address: rejected the same way;
- known: the presentation contexts of the services it may not use (``allow_echo``,
  ``allow_mwl_find``, ``allow_mpps``, ``allow_store``) are removed from what this
  association accepts, so they are refused at negotiation ("abstract syntax not supported").

The node found is kept on the association (``node_of``) for the handlers (e.g. the MWL
station filter).  The wrong called AE title is refused by the acceptor.
"""

from __future__ import annotations

import logging
import socket

from django.conf import settings
from django.db import DatabaseError
from pynetdicom.sop_class import ModalityPerformedProcedureStep, ModalityWorklistInformationFind, Verification

from pacs.dimse import db
from pacs.dimse.acceptor import Rejected
from pacs.models import DicomNode

log = logging.getLogger("pacs.dimse.policy")

REJECTED_PERMANENT = 0x01
REJECTED_TRANSIENT = 0x02
SOURCE_SERVICE_USER = 0x01
SOURCE_PROVIDER_PRESENTATION = 0x03
CALLING_AE_NOT_RECOGNISED = 0x03
TEMPORARY_CONGESTION = 0x01

# Which DicomNode flag a SOP class needs; any other SOP class (storage, storage commitment) needs allow_store.
SERVICE_FLAGS = {
    str(Verification): "allow_echo",
    str(ModalityWorklistInformationFind): "allow_mwl_find",
    str(ModalityPerformedProcedureStep): "allow_mpps",
}
_ATTR = "pacs_node"


def service_flag(abstract_syntax: str) -> str:
    return SERVICE_FLAGS.get(str(abstract_syntax), "allow_store")


def node_of(assoc) -> DicomNode | None:
    return getattr(assoc, _ATTR, None)


def _host_matches(node: DicomNode, address: str) -> bool:
    if not node.host:
        return True
    if node.host == address:
        return True
    try:
        return address in {info[4][0] for info in socket.getaddrinfo(node.host, None)}
    except OSError:
        return False


def _node(ae_title: str) -> DicomNode | None:
    """The enabled node with this AE title (one indexed lookup per association; raw SQL: the
    ORM's query building was half of its cost)."""
    rows = list(DicomNode.objects.raw(
        f"SELECT * FROM {DicomNode._meta.db_table} WHERE ae_title = %s AND enabled ORDER BY id LIMIT 1", [ae_title]))
    return rows[0] if rows else None


def _reject(assoc, result: int, source: int, diagnostic: int) -> None:
    """A-ASSOCIATE-RJ (sent by the acceptor)."""
    raise Rejected(result, source, diagnostic)


def check(assoc) -> None:
    """A-ASSOCIATE-RQ: accept, narrow the services, or reject (``Rejected``) the association."""
    calling = assoc.requestor.ae_title
    address = assoc.requestor.address
    try:
        node = db.run(_node, calling)
    except DatabaseError as exc:
        log.error("association refused: node lookup failed", extra={"calling_ae_title": calling, "error": str(exc)})
        _reject(assoc, REJECTED_TRANSIENT, SOURCE_PROVIDER_PRESENTATION, TEMPORARY_CONGESTION)
        return
    if node is None:
        if not settings.DICOM_ALLOW_UNKNOWN_AE:
            log.warning(
                "association rejected: unknown calling AE",
                extra={"calling_ae_title": calling, "peer": address, "event": "dicom.association.rejected"},
            )
            _reject(assoc, REJECTED_PERMANENT, SOURCE_SERVICE_USER, CALLING_AE_NOT_RECOGNISED)
        return
    if not _host_matches(node, address):
        log.warning(
            "association rejected: calling AE from an unexpected host",
            extra={"calling_ae_title": calling, "peer": address, "expected_host": node.host,
                   "event": "dicom.association.rejected"},
        )
        _reject(assoc, REJECTED_PERMANENT, SOURCE_SERVICE_USER, CALLING_AE_NOT_RECOGNISED)
        return
    setattr(assoc, _ATTR, node)
    allowed = [cx for cx in assoc.supported_contexts if getattr(node, service_flag(cx.abstract_syntax))]
    if len(allowed) != len(assoc.supported_contexts):
        assoc.supported_contexts = allowed
