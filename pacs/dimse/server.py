"""Build and start the engine's one DICOM application entity (``manage.py run_dicom``).

Services are collected from the modules in ``SERVICE_MODULES``; each provides
``contexts()`` and ``handlers()`` (see ``pacs.dimse``).  Who may associate, and for which
services, is decided by ``pacs.dimse.policy`` when the A-ASSOCIATE-RQ arrives.  Every association runs in its
own thread; the thread's database connection is closed when the association ends.
"""

from __future__ import annotations

import importlib
import logging
import socket

from django.conf import settings
from django.db import connections
from pynetdicom import AE, _config, evt
from pynetdicom.transport import ThreadedAssociationServer

from pacs.dimse import db, policy

log = logging.getLogger("pacs.dimse")

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


def _no_delay(event):
    """Connection open: Nagle off (TCP_NODELAY), so that each DIMSE message goes out at
    once instead of waiting for the peer's delayed ACK (about 40 ms per message on loopback)."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def _close_db(event):
    """Association over: give this thread's database connection back."""
    connections.close_all()


def quiet_pynetdicom() -> None:
    """pynetdicom's own per-message logging off: its standard handlers format every PDU and
    DIMSE message, and it pretty-prints every C-FIND identifier (the patient's name and ID)
    even when DEBUG is off.  Patient data stays out of the logs (pacs.logs) and each match
    costs less; our handlers log what happened, with identifiers but no names."""
    _config.LOG_HANDLER_LEVEL = "none"
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False


def build_ae(ae_title: str | None = None) -> tuple[AE, list]:
    quiet_pynetdicom()
    ae = AE(ae_title=ae_title or settings.DICOM_AE_TITLE)
    ae.maximum_associations = settings.DICOM_MAX_ASSOCIATIONS
    ae.acse_timeout = settings.DICOM_ACSE_TIMEOUT
    ae.dimse_timeout = settings.DICOM_DIMSE_TIMEOUT
    ae.network_timeout = settings.DICOM_NETWORK_TIMEOUT
    ae.maximum_pdu_size = settings.DICOM_MAX_PDU
    ae.require_called_aet = True
    handlers = [
        (evt.EVT_CONN_OPEN, _no_delay),
        (evt.EVT_REQUESTED, policy.on_requested),  # who may associate, for which services
        (evt.EVT_RELEASED, _close_db),
        (evt.EVT_ABORTED, _close_db),
        (evt.EVT_CONN_CLOSE, _close_db),
    ]
    for module in _service_modules():
        for sop_class, syntaxes in module.contexts():
            ae.add_supported_context(sop_class, syntaxes)
        handlers.extend(module.handlers())
    return ae, handlers


class SharedContexts(list):
    """The server's presentation contexts, handed to each association as a plain list copy.

    pynetdicom deep-copies the supported contexts for every association (about 2 ms of CPU
    here, most of it re-validating UIDs); negotiation only reads them
    (``presentation.negotiate_as_acceptor``) and ``pacs.dimse.policy`` replaces the list rather
    than changing it, so a shallow copy is enough."""

    def __deepcopy__(self, memo):
        return list(self)


def _share_contexts(server) -> None:
    server.contexts = SharedContexts(server.contexts)


class ReusePortServer(ThreadedAssociationServer):
    """The threaded association server, bound with SO_REUSEPORT so that several
    ``run_dicom --workers`` processes share one port (the kernel spreads connections)."""

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def start_server(host: str | None = None, port: int | None = None, *, block: bool = False, ae_title: str | None = None,
                 reuse_port: bool = False):
    """Start the AE.  Returns the threaded server (``block=False``) whose
    ``server_address[1]`` is the port (0 asks the OS for a free one, for tests)."""
    ae, handlers = build_ae(ae_title)
    address = (host or settings.DICOM_HOST, settings.DICOM_PORT if port is None else port)
    log.info("dicom listener starting", extra={"ae_title": ae.ae_title, "host": address[0], "port": address[1]})
    if block:
        server_class = ReusePortServer if reuse_port else ThreadedAssociationServer
        server = ae.make_server(address, evt_handlers=handlers, server_class=server_class)
        _share_contexts(server)
        ae._servers.append(server)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()
            db.stop()
        return None
    server = ae.start_server(address, block=False, evt_handlers=handlers)
    _share_contexts(server)
    stop_server = server.shutdown

    def shutdown() -> None:
        stop_server()
        db.stop()  # close the handlers' database connections

    server.shutdown = shutdown
    return server
