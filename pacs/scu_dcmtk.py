"""C-STORE to the VNA with dcmtk's ``storescu`` (``VNA_DICOM_SENDER=dcmtk``), PS3.4 B.

pynetdicom's SCU sends about a quarter to a half of what dcmtk's ``storescu`` sends on the
same link (bench/RESULTS.md "Images and VNA routing"), so a worker can hand the
C-STORE part of a transfer to ``/usr/bin/storescu`` instead: one process, one association for
all the files of the transfer, ``--required`` (only the presentation contexts the files need:
their SOP classes, their stored transfer syntax first).  Its log (``-v``) gives one line per
file and one per response, read as they come, so progress (and the worker's lease) is
recorded every few instances.  Storage commitment stays with pynetdicom (``pacs.scu``).

A response ``Success``/``Warning`` counts as sent, ``Refused: OutOfResources`` (0xA7xx) is
retried, any other response or a file storescu could not send (no accepted presentation
context) is permanent.  An association rejected permanently is permanent; refused, aborted
or timed out is transient.  The storescu process dies with the worker (PR_SET_PDEATHSIG).

To a ``dicoms://`` destination storescu runs with ``+tls`` (the engine's key and certificate;
``+tla`` without one) in the non-downgrading BCP 195 profile (PS3.15 B.9), the VNA's
certificate required and verified against TLS_CA_CERTIFICATES (``+cf``; the system's store
``+cd /etc/ssl/certs`` when unset).  dcmtk 3.6.7 does not compare the certificate's names with
the host, so the engine first makes one TLS handshake of its own with ``project.tls``'s checks
(chain and host name) and starts storescu only when that passes.  A refused certificate is
permanent, as with the engine's sender (``pacs.scu``).
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import tempfile
from pathlib import Path

from django.conf import settings
from pydicom import dcmread

from pacs.scu import check_peer, tls_context, where
from pacs.services.routing.sending import ItemOutcome, ItemToSend, PermanentError, TransientError

STORESCU = "/usr/bin/storescu"
SYSTEM_CERTIFICATES = "/etc/ssl/certs"
PROGRESS_EVERY = 10
_SENDING = re.compile(r"^I: Sending file: (?P<path>.+)$")
_RESPONSE = re.compile(r"^I: Received Store Response \((?P<status>.*)\)$")
_STORE_FAILED = re.compile(r"^E: (Store Failed, file: |No presentation context for: )(?P<rest>.*)$")


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def classify_response(text: str) -> tuple[bool, bool]:
    """(ok, transient) from storescu's response text (DU_cstoreStatusString)."""
    if text.startswith("Success") or text.startswith("Warning"):
        return True, False
    if "OutOfResources" in text or "Out of Resources" in text:
        return False, True
    return False, False


def _corrected_copies(items: list[ItemToSend], corrections: dict[str, str], directory: Path) -> dict[str, ItemToSend]:
    by_path = {}
    for item in items:
        ds = dcmread(item.path)
        for keyword, value in corrections.items():
            setattr(ds, keyword, value)
        path = directory / f"{item.item_id}.dcm"
        ds.save_as(path, enforce_file_format=True)
        by_path[str(path)] = item
    return by_path


def tls_arguments() -> list[str]:
    """storescu's TLS options (dcmtk 3.6.7): the engine's certificate, the trusted CAs, BCP 195."""
    own = (["+tls", settings.TLS_PRIVATE_KEY, settings.TLS_CERTIFICATE]
           if settings.TLS_CERTIFICATE and settings.TLS_PRIVATE_KEY else ["+tla"])
    trusted = ["+cf", settings.TLS_CA_CERTIFICATES] if settings.TLS_CA_CERTIFICATES else ["+cd", SYSTEM_CERTIFICATES]
    return [*own, "-pem", *trusted, "+py", "-rc"]


def send_items(destination, items: list[ItemToSend], *, corrections: dict[str, str], progress) -> list[ItemOutcome]:
    context = tls_context(destination)
    if context is not None:
        check_peer(destination, context)
    with tempfile.TemporaryDirectory(prefix="route-") as tmp:
        if corrections:
            by_path = _corrected_copies(items, corrections, Path(tmp))
        else:
            by_path = {item.path: item for item in items}
        args = [
            STORESCU, "-v", "--required", "-aet", settings.DICOM_AE_TITLE, "-aec", destination.ae_title,
            "-to", str(int(settings.DICOM_NETWORK_TIMEOUT)), "-ta", str(int(settings.DICOM_ACSE_TIMEOUT)),
            "-td", str(int(settings.DICOM_DIMSE_TIMEOUT)), *(tls_arguments() if context else []),
            destination.host, str(int(destination.port)),
        ]
        env = {**os.environ, "TCP_NODELAY": "1"}
        process = subprocess.Popen([*args, *by_path], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   env=env, preexec_fn=_die_with_parent)
        outcomes: dict[int, ItemOutcome] = {}
        chunk: list[ItemOutcome] = []
        current: ItemToSend | None = None
        fatal: list[str] = []
        rejected_permanently = False

        def record(outcome: ItemOutcome):
            nonlocal chunk
            outcomes[outcome.item_id] = outcome
            chunk.append(outcome)
            if len(chunk) >= PROGRESS_EVERY:
                progress(chunk)
                chunk = []

        assert process.stderr is not None
        for raw in process.stderr:
            line = raw.rstrip("\n")
            if m := _SENDING.match(line):
                current = by_path.get(m["path"])
            elif (m := _RESPONSE.match(line)) and current is not None:
                ok, transient = classify_response(m["status"])
                record(ItemOutcome(current.item_id, ok, transient=transient,
                                   reason="" if ok else f"C-STORE response: {m['status']}"))
                current = None
            elif _STORE_FAILED.match(line) and current is not None and current.item_id not in outcomes:
                record(ItemOutcome(current.item_id, False, transient=False,
                                   reason=f"SOP class {current.sop_class_uid} in {current.transfer_syntax_uid} "
                                          f"not accepted by the VNA ({line[3:120]})"))
                current = None
            elif line.startswith("F: ") or line.startswith("E: "):
                fatal.append(line[3:])
                if "Rejected Permanent" in line:
                    rejected_permanently = True
        process.wait()
        if chunk:
            progress(chunk)
    if not outcomes and fatal:
        reason = f"no association with {where(destination)}: {'; '.join(fatal)[:300]}"
        if rejected_permanently:
            raise PermanentError(reason)
        raise TransientError(reason)
    missing = [i for i in items if i.item_id not in outcomes]
    lost = "; ".join(fatal)[:200] or f"storescu exit status {process.returncode}"
    return [*outcomes.values(), *(ItemOutcome(i.item_id, False, transient=True, reason=lost) for i in missing)]
