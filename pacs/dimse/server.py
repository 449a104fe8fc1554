"""Build and start the engine's one DICOM application entity (``manage.py run_dicom``).

Services are collected from the modules in ``SERVICE_MODULES``; each provides
``contexts()`` and ``handlers()`` (see ``pacs.dimse``).  Who may associate, and for which
services, is decided by ``pacs.dimse.policy`` when the A-ASSOCIATE-RQ arrives, from the DICOM nodes
(those declared in DICOM_NODES are written into them when the listener starts).  The network
side is ``pacs.dimse.acceptor``: every association on its own thread, whose database
connection (if it opened one) is closed when the association ends.
"""

from __future__ import annotations

import importlib
import logging

from django.conf import settings
from django.db import DatabaseError, connections
from pynetdicom.presentation import build_context

from pacs import storage
from pacs.dimse import db, policy
from pacs.dimse.acceptor import Acceptor
from pacs.services import peers

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


def _close_db(assoc) -> None:
    """Association over: give this thread's database connection back."""
    connections.close_all()


def services() -> tuple[list, dict]:
    """The presentation contexts (SCP side) and DIMSE handlers of every service module."""
    contexts, handlers = [], {}
    for module in _service_modules():
        for sop_class, syntaxes in module.contexts():
            contexts.append(build_context(sop_class, syntaxes))
        handlers.update(module.handlers())
    for n, cx in enumerate(contexts):
        cx.context_id = 2 * n + 1
    return contexts, handlers


def build_server(host: str, port: int, *, ae_title: str | None = None, reuse_port: bool = False) -> Acceptor:
    contexts, handlers = services()
    return Acceptor(
        (host, port),
        ae_title=ae_title or settings.DICOM_AE_TITLE,
        contexts=contexts,
        handlers=handlers,
        policy=policy.check,
        on_end=_close_db,
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
    )


def start_server(host: str | None = None, port: int | None = None, *, block: bool = False, ae_title: str | None = None,
                 reuse_port: bool = False):
    """Start the AE.  Returns the running server (``block=False``) whose
    ``server_address[1]`` is the port (0 asks the OS for a free one, for tests) and whose
    ``shutdown()`` stops it; with ``block=True`` serves until interrupted."""
    stale = storage.sweep_incoming(INCOMING_STALE_AFTER)
    if stale:
        log.warning("incomplete received files removed", extra={"files": stale, "older_than_s": INCOMING_STALE_AFTER})
    try:
        peers.sync_environment_nodes()
    except DatabaseError as exc:  # the rows of the last start stay in force; lookups fail until it is back
        log.error("DICOM_NODES not written to the database", extra={"error": str(exc)[:200]})
    address = (host or settings.DICOM_HOST, settings.DICOM_PORT if port is None else port)
    server = build_server(address[0], address[1], ae_title=ae_title, reuse_port=reuse_port)
    log.info("dicom listener starting", extra={"ae_title": server.ae_title, "host": address[0],
                                               "port": server.server_address[1]})
    if block:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
            db.stop()
        return None
    server.start()
    stop_server = server.shutdown

    def shutdown() -> None:
        stop_server()
        db.stop()  # close the handlers' database connections

    server.shutdown = shutdown
    return server
