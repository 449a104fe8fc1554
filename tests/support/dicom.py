"""Clients of the engine's DICOM listener (PS3.7 DIMSE, PS3.8 upper layer): dcmtk's findscu and
echoscu, pynetdicom as an SCU for what dcmtk refuses to send, a ``manage.py run_dicom`` process on
the test database.  The in-process listener itself is a fixture (``engine``, ``dicom_server``,
``listen`` in tests/conftest.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityWorklistInformationFind

from tests.support.net import dcmtk_tool

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
ROOT = Path(__file__).resolve().parents[2]
# Another source address on this machine, outside the loopback default of DICOM_UNKNOWN_AE_FROM.
OTHER = "127.0.0.2"


def port_of(server) -> int:
    return server.server_address[1]


port = port_of


def new_uid() -> str:
    return generate_uid()


def pynetdicom_store(server_port: int, datasets, *, called="PACS"):
    """Send datasets with pynetdicom as the SCU (for cases dcmtk refuses to send); returns statuses."""
    ae = AE(ae_title="MODALITY")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", server_port, ae_title=called)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def findscu(server, keys: list[str], out: Path, *, aet="MOD1", aec="PACS", extra=(), timeout=30, worklist=True):
    """Run dcmtk's findscu (-W unless ``worklist`` is False) with ``-k`` keys; returns (completed
    process, response datasets)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    args = [dcmtk_tool("findscu"), *(["-W"] if worklist else []), "-aet", aet, "-aec", aec, "-to", "10", "-X",
            "-od", str(out), *extra]
    for key in keys:
        args += ["-k", key]
    args += ["127.0.0.1", str(port_of(server))]
    proc = subprocess.run(args, capture_output=True, text=True, env=DCMTK_ENV, timeout=timeout)
    return proc, [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def qr_findscu(server, model: str, keys: list[str], out: Path, *, aet="WS1", aec="PACS", extra=(), timeout=30):
    """dcmtk's findscu on a Query/Retrieve information model (``model``: "-S" Study Root, "-P"
    Patient Root); returns (completed process, response datasets in the order received)."""
    return findscu(server, keys, out, aet=aet, aec=aec, extra=(model, *extra), timeout=timeout, worklist=False)


def retrieve_tool(tool: str, server, model: str, keys: list[str], *, aet="WS1", aec="PACS", extra=(), timeout=60):
    """dcmtk's movescu or getscu (``tool``) with ``-k`` keys; returns the completed process."""
    args = [dcmtk_tool(tool), "-v", "-aet", aet, "-aec", aec, "-to", "10", model, *extra]
    for key in keys:
        args += ["-k", key]
    args += ["127.0.0.1", str(port_of(server))]
    return subprocess.run(args, capture_output=True, text=True, env=DCMTK_ENV, timeout=timeout)


def start_storescp(port: int, out: Path, *, aet="STORESCP", extra=()) -> subprocess.Popen:
    """dcmtk's storescp receiving into ``out`` (every storage SOP class, uncompressed unless
    ``extra`` says otherwise, e.g. ``+xi``: implicit VR little endian only)."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([dcmtk_tool("storescp"), "-aet", aet, "-od", str(out), "-uf", *extra, str(port)],
                            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("storescp did not start")


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


def tls_args(pki, issued) -> list[str]:
    """dcmtk: TLS with this certificate and key, the engine's certificate verified against the CA."""
    return ["+tls", str(issued.key), str(issued.cert), "+cf", str(pki.ca_file)] if issued else [
        "+tla", "+cf", str(pki.ca_file)]


def tls_echoscu(server, pki, issued, *, aet="CT1"):
    args = [dcmtk_tool("echoscu"), "-aet", aet, "-aec", "PACS", "-to", "10", *tls_args(pki, issued),
            "127.0.0.1", str(port_of(server.tls_server))]
    return subprocess.run(args, capture_output=True, text=True, env=DCMTK_ENV, timeout=60)


def mwl_find(assoc, ds):
    """A C-FIND on the Modality Worklist (PS3.4 K.4) over ``assoc``: [(status, identifier)]."""
    return [(status.Status if status else None, identifier) for status, identifier in
            assoc.send_c_find(ds, ModalityWorklistInformationFind)]


def worklist_query(modality="CT") -> Dataset:
    """An MWL query as a modality asks: its modality's steps on 2026-11-26, name and accession returned."""
    ds = Dataset()
    ds.PatientName = ""
    ds.AccessionNumber = ""
    item = Dataset()
    item.Modality = modality
    item.ScheduledProcedureStepStartDate = "20261126"
    ds.ScheduledProcedureStepSequence = Sequence([item])
    return ds
