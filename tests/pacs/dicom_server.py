"""The real DICOM listener on an ephemeral port, and dcmtk's findscu/echoscu driving it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, evt

from tests.conftest import dcmtk_tool

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
ROOT = Path(__file__).resolve().parents[2]
# Another source address on this machine, outside the loopback default of DICOM_UNKNOWN_AE_FROM.
OTHER = "127.0.0.2"


@pytest.fixture(name="dicom_server")
def dicom_server_fixture(transactional_db, settings):
    """``start_server('127.0.0.1', 0)``: the AE of ``manage.py run_dicom``; stopped after the test."""
    from pacs.dimse.server import start_server

    settings.DICOM_AE_TITLE = "PACS"
    server = start_server("127.0.0.1", 0)
    try:
        yield server
    finally:
        server.shutdown()


def port_of(server) -> int:
    return server.server_address[1]


def findscu(server, keys: list[str], out: Path, *, aet="MOD1", aec="PACS", extra=(), timeout=30):
    """Run dcmtk's findscu (-W) with ``-k`` keys; returns (completed process, response datasets)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    args = [dcmtk_tool("findscu"), "-W", "-aet", aet, "-aec", aec, "-to", "10", "-X", "-od", str(out), *extra]
    for key in keys:
        args += ["-k", key]
    args += ["127.0.0.1", str(port_of(server))]
    proc = subprocess.run(args, capture_output=True, text=True, env=DCMTK_ENV, timeout=timeout)
    return proc, [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def echoscu(server, *, aet="MOD1", aec="PACS"):
    args = [dcmtk_tool("echoscu"), "-aet", aet, "-aec", aec, "-to", "10", "127.0.0.1", str(port_of(server))]
    return subprocess.run(args, capture_output=True, text=True, env=DCMTK_ENV, timeout=30)


def run_dicom_env(**extra) -> dict:
    """The environment of a ``manage.py run_dicom`` process on the test database."""
    from django.db import connection

    db = connection.settings_dict
    return {**os.environ, "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            "DICOM_AE_TITLE": "PACS", "LOG_LEVEL": "WARNING", **{k: str(v) for k, v in extra.items()}}


def start_run_dicom(port: int, env: dict, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "manage.py", "run_dicom", "--host", "127.0.0.1", "--port", str(port),
                             *args], cwd=ROOT, env=env, **popen)


def stop_process(proc: subprocess.Popen) -> bool:
    """SIGTERM, then SIGKILL after 30 s; True if SIGTERM was enough."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False


@pytest.fixture(name="listen")
def listen_fixture(transactional_db, settings):
    """Start the AE (as run_dicom does, after the test set its settings) on 127.0.0.1."""
    from pacs.dimse.server import start_server

    servers = []
    settings.DICOM_AE_TITLE = "PACS"

    def start():
        servers.append(start_server("127.0.0.1", 0))
        return servers[-1]

    yield start
    for server in servers:
        server.shutdown()


def associate_from(server, calling: str, contexts, *, source: str = OTHER, ext_neg=None):
    """pynetdicom from ``source``: (association, (result, source, reason) of an A-ASSOCIATE-RJ or None)."""
    received = []
    ae = AE(ae_title=calling)
    for cx in contexts:
        ae.add_requested_context(cx)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port_of(server), ae_title="PACS", bind_address=(source, 0), ext_neg=ext_neg,
                         evt_handlers=[(evt.EVT_ACSE_RECV, lambda e: received.append(e.primitive))])
    rj = [(p.result, p.result_source, p.diagnostic) for p in received if getattr(p, "result", None) not in (None, 0)]
    return assoc, (rj[0] if rj else None)
