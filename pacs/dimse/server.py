"""Build and start the engine's one DICOM application entity (``manage.py run_dicom``).

Services are collected from the modules in ``SERVICE_MODULES``; each provides
``contexts()`` and ``handlers()`` (see ``pacs.dimse``).  Who may associate, and for which
services, is decided by ``pacs.dimse.policy`` when the A-ASSOCIATE-RQ arrives, from the DICOM nodes
(those declared in DICOM_NODES are written into them when the listener starts).  The network
side is ``pacs.dimse.acceptor``: every association on its own thread, whose database
connection (if it opened one) is closed when the association ends.

With TLS_CERTIFICATE set and DICOM_TLS_PORT not 0, a second listener serves the same AE, the
same services and the same limits over TLS (PS3.15 B.9, the BCP 195 profile of ``project.tls``),
asking for client certificates as DICOM_TLS_CLIENT_CERTIFICATES says.
"""

from __future__ import annotations

import importlib
import logging

from django.conf import settings
from django.db import DatabaseError, connections
from pynetdicom.presentation import build_context

from pacs import auditing, storage
from pacs.dimse import db, policy
from pacs.dimse.acceptor import Acceptor
from pacs.models import DicomNode
from pacs.services import peers
from project import tls

log = logging.getLogger("pacs.dimse")

# Files in STORAGE_DIR/.incoming not written to for this long (seconds) when a listener starts
# were left by a crash: nothing indexed them and no Success was sent for them.
INCOMING_STALE_AFTER = 3600.0

# The services of the AE, in the order their presentation contexts are added.
SERVICE_MODULES = [
    "pacs.dimse.echo",
    "pacs.dimse.mwl",
    "pacs.dimse.mpps",
    "pacs.dimse.store",
    "pacs.dimse.commitment",
    "pacs.dimse.qr",
]


def _service_modules():
    modules = []
    for name in SERVICE_MODULES:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real import error inside an existing module
                raise
    return modules


def _association_ended(assoc) -> None:
    """Association over: the studies it stored go on the audit trail (one record per study,
    ``pacs.auditing``), then this thread's database connection is given back."""
    try:
        auditing.association_ended(assoc)
    except Exception:  # noqa: BLE001 - the instances are stored; a failure to record is logged
        log.exception("instances received not recorded on the audit trail")
    connections.close_all()


class _BySopClass:
    """The handler of one DIMSE command: each request goes to the handler of the module whose
    SOP class its presentation context negotiated (C-FIND: the worklist or Query/Retrieve).
    ``sop_classes`` tells the acceptor which contexts the command is served on: on any other
    (a C-GET on the Verification context) it is answered 0x0211."""

    def __init__(self, served: list[tuple[frozenset, object]]):
        self.table = {sop_class: handler for sop_classes, handler in served for sop_class in sop_classes}
        self.sop_classes = frozenset(self.table)

    def __call__(self, event):
        return self.table[event.context.abstract_syntax](event)


def services() -> tuple[list, dict]:
    """The presentation contexts (SCP side) and DIMSE handlers of every service module.  A
    module with ``ROLE_SELECTION`` accepts an SCP/SCU Role Selection on its contexts (PS3.7
    D.3.3.4): the storage SOP classes, on which a C-GET's sub-operations are sent back."""
    contexts, served = [], {}
    for module in _service_modules():
        sop_classes = []
        for sop_class, syntaxes in module.contexts():
            cx = build_context(sop_class, syntaxes)
            if getattr(module, "ROLE_SELECTION", False):
                cx.scu_role, cx.scp_role = True, True
            contexts.append(cx)
            sop_classes.append(str(sop_class))
        for command, handler in module.handlers().items():
            served.setdefault(command, []).append((frozenset(sop_classes), handler))
    handlers = {command: _BySopClass(entries) for command, entries in served.items()}
    for n, cx in enumerate(contexts):
        cx.context_id = 2 * n + 1
    return contexts, handlers


def tls_enabled(tls_port: int | None = None) -> bool:
    """Whether the DICOM TLS listener runs (a certificate is configured and its port is not 0)."""
    return bool(settings.TLS_CERTIFICATE) and (settings.DICOM_TLS_PORT if tls_port is None else tls_port) != 0


def build_server(host: str, port: int, *, ae_title: str | None = None, reuse_port: bool = False,
                 ssl_context=None) -> Acceptor:
    contexts, handlers = services()
    return Acceptor(
        (host, port),
        ae_title=ae_title or settings.DICOM_AE_TITLE,
        contexts=contexts,
        handlers=handlers,
        policy=policy.check,
        on_end=_association_ended,
        on_handshake_failure=auditing.handshake_failed,
        maximum_associations=settings.DICOM_MAX_ASSOCIATIONS,
        maximum_pdu_size=settings.DICOM_MAX_PDU,
        acse_timeout=settings.DICOM_ACSE_TIMEOUT,
        network_timeout=settings.DICOM_NETWORK_TIMEOUT,
        dimse_timeout=settings.DICOM_DIMSE_TIMEOUT,
        maximum_pending=settings.DICOM_MAX_PENDING_CONNECTIONS,
        maximum_pending_per_address=settings.DICOM_MAX_PENDING_PER_ADDRESS,
        maximum_dataset_size=settings.DICOM_MAX_DATASET_SIZE,
        min_receive_rate=settings.DICOM_MIN_RECEIVE_RATE,
        reuse_port=reuse_port,
        ssl_context=ssl_context,
    )


def _warn_unreachable_certificate_nodes(with_tls: bool) -> None:
    """Nodes bound to a certificate can only associate over TLS with client certificates asked
    for: say so when this listener cannot admit them."""
    if with_tls and settings.DICOM_TLS_CLIENT_CERTIFICATES != "none":
        return
    try:
        bound = list(DicomNode.objects.filter(enabled=True).exclude(certificate_name="")
                     .values_list("ae_title", flat=True)[:20])
    except DatabaseError:
        return
    if bound:
        log.warning("dicom nodes with a certificate name cannot associate: no DICOM TLS listener asking for "
                    "client certificates (TLS_CERTIFICATE, DICOM_TLS_PORT, DICOM_TLS_CLIENT_CERTIFICATES)",
                    extra={"nodes": bound})


def start_server(host: str | None = None, port: int | None = None, *, block: bool = False, ae_title: str | None = None,
                 reuse_port: bool = False, tls_port: int | None = None):
    """Start the AE.  Returns the running server (``block=False``) whose
    ``server_address[1]`` is the port (0 asks the OS for a free one, for tests), whose
    ``tls_server`` is the TLS listener (None when TLS is off; ``tls_port`` defaults to
    DICOM_TLS_PORT) and whose ``shutdown()`` stops both; with ``block=True`` serves until
    interrupted.  A TLS file that cannot be loaded raises ``tls.TLSConfigurationError`` before
    anything listens."""
    stale = storage.sweep_incoming(INCOMING_STALE_AFTER)
    if stale:
        log.warning("incomplete received files removed", extra={"files": stale, "older_than_s": INCOMING_STALE_AFTER})
    try:
        peers.sync_environment_nodes()
    except DatabaseError as exc:  # the rows of the last start stay in force; lookups fail until it is back
        log.error("DICOM_NODES not written to the database", extra={"error": str(exc)[:200]})
    address = (host or settings.DICOM_HOST, settings.DICOM_PORT if port is None else port)
    context = tls.server_context(settings.DICOM_TLS_CLIENT_CERTIFICATES) if tls_enabled(tls_port) else None
    _warn_unreachable_certificate_nodes(context is not None)
    server = build_server(address[0], address[1], ae_title=ae_title, reuse_port=reuse_port)
    server.tls_server = None
    if context is not None:
        try:
            server.tls_server = build_server(address[0], settings.DICOM_TLS_PORT if tls_port is None else tls_port,
                                             ae_title=ae_title, reuse_port=reuse_port, ssl_context=context)
        except BaseException:
            server.server_close()
            raise
        server.tls_server.start()
        log.info("dicom TLS listener starting", extra={
            "ae_title": server.ae_title, "host": address[0], "port": server.tls_server.server_address[1],
            "client_certificates": settings.DICOM_TLS_CLIENT_CERTIFICATES})
    log.info("dicom listener starting", extra={"ae_title": server.ae_title, "host": address[0],
                                               "port": server.server_address[1]})
    if block:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
            if server.tls_server is not None:
                server.tls_server.shutdown()
            db.stop()
        return None
    server.start()
    stop_server = server.shutdown

    def shutdown() -> None:
        stop_server()
        if server.tls_server is not None:
            server.tls_server.shutdown()
        db.stop()  # close the handlers' database connections

    server.shutdown = shutdown
    return server
