"""The department's clients during a drill, each keeping exactly what it was told.

- ``HL7Sender``: an EHR's outbound interface.  One MLLP connection kept open, one message at a
  time; a message without an answer (connection reset, ACK timeout) is sent again, byte for
  byte, with the same MSH-10 -- what HL7 v2.5.1 section 2.9.2 (original mode) expects of a
  sender, and what the receiver's duplicate detection must absorb.  AE is retried after a pause
  (a transient error of the receiver); AA ends the message.
- ``DicomSender``: a modality doing each exam as IHE Scheduled Workflow has it: the Modality
  Worklist query for the accession (RAD-5, dcmtk ``findscu``), MPPS IN PROGRESS (RAD-6,
  N-CREATE), the images with dcmtk ``storescu`` (RAD-8; each instance whose C-STORE response was
  Success, 0000 in PS3.4 B.2.3, is recorded, the others are sent again) and MPPS COMPLETED
  (RAD-7, N-SET).  A query or an MPPS request without an answer is asked again.
- ``ReportSigner``: a dictation system signing final reports through ``POST /api/v1/reports/``.
  A request without an answer is checked with ``GET`` before it is sent again: a report signed
  is recorded once, whether the 201 reached the client or not.

All data are synthetic.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from hl7gateway.mllp import MLLPDecoder, frame
from tests.support.hl7 import fixture
from tests.support.mpps import CT_IMAGE, n_create_for, n_set_for
from tests.support.net import dcmtk_tool
from tests.support.orthanc import write_study


class Backoff:
    """A client's resend schedule: pauses from ``first`` growing by half up to ``most``, for
    ``give_up_after`` seconds in all (``while backoff.more(): ... backoff.pause()``)."""

    def __init__(self, give_up_after: float, first: float = 0.2, most: float = 2.0):
        self.deadline = time.monotonic() + give_up_after
        self.next = first
        self.most = most

    def more(self) -> bool:
        return time.monotonic() < self.deadline

    def pause(self) -> None:
        time.sleep(self.next)
        self.next = min(self.next * 1.5, self.most)


# --------------------------------------------------------------------------------------- HL7 intake
@dataclass
class OrderMessage:
    control_id: str
    patient_id: str
    placer: str
    accessions: tuple[str, str]
    study_instance_uids: tuple[str, str]
    raw: bytes


def order_message(tag: str, n: int, patients: int) -> OrderMessage:
    """The ORM^O01 fixture as new order ``n`` of the drill ``tag``: its own MSH-10, placer
    number, accession numbers (OBR-18, at most 16 characters), procedure and step IDs and Study
    Instance UIDs; one of ``patients`` synthetic patients (PID-3), without the SSN repetition."""
    patient = f"DP{tag}{n % patients:03d}"
    placer = f"DO{tag}{n:06d}"
    accessions = (f"D{tag}{n:06d}A", f"D{tag}{n:06d}B")
    control_id = f"DM{tag}{n:06d}"
    studies = tuple(f"1.2.826.0.1.3680043.10.1234.{int(tag, 16)}.{n}.{k}" for k in (1, 2))
    raw = fixture("epic_orm_o01_nw.hl7")
    for old, new in ((b"EPC000101", control_id), (b"E1000001", patient), (b"~900-00-0001^^^SSA^SS", ""),
                     (b"A7000001", f"DA{tag}{n:06d}"), (b"V5000001", f"DV{tag}{n:06d}"), (b"P10001^", f"{placer}^"),
                     (b"EA100001", accessions[0]), (b"EA100002", accessions[1]),
                     (b"RP100001", f"RA{tag}{n:06d}"), (b"RP100002", f"RB{tag}{n:06d}"),
                     (b"SPS100001", f"SA{tag}{n:06d}"), (b"SPS100002", f"SB{tag}{n:06d}"),
                     (b"1.2.826.0.1.3680043.10.1234.1001", studies[0]),
                     (b"1.2.826.0.1.3680043.10.1234.1002", studies[1])):
        raw = raw.replace(old, new.encode() if isinstance(new, str) else new)
    return OrderMessage(control_id, patient, placer, accessions, studies, raw)


@dataclass
class HL7Outcome:
    message: OrderMessage
    sends: int = 0
    unanswered: int = 0  # sends that got no ACK (connection lost, ACK timeout)
    answers: list[str] = field(default_factory=list)  # MSA-1 of each ACK received
    final: str = ""  # AA, AR, or "" when given up

    @property
    def resent_after_lost_ack(self) -> bool:
        return self.unanswered > 0 and self.final == "AA"


class HL7Sender(threading.Thread):
    """Sends new orders on one kept-open connection until ``stop`` is set and at least
    ``minimum`` were sent; the message being sent when ``stop`` comes is finished."""

    def __init__(self, name: str, port: int, tag: str, numbers, patients: int, stop: threading.Event,
                 minimum: int, on_applied, ack_timeout: float = 30.0, give_up_after: float = 600.0):
        super().__init__(name=name, daemon=True)
        self.port = port
        self.tag = tag
        self.numbers = numbers  # a shared counter (itertools.count under a lock)
        self.patients = patients
        self.stop = stop
        self.minimum = minimum
        self.on_applied = on_applied
        self.ack_timeout = ack_timeout
        self.give_up_after = give_up_after
        self.outcomes: list[HL7Outcome] = []
        self.sock: socket.socket | None = None
        self.decoder = MLLPDecoder()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set() or len(self.outcomes) < self.minimum:
                message = order_message(self.tag, self.numbers(), self.patients)
                outcome = HL7Outcome(message)
                self.outcomes.append(outcome)
                self._send(outcome)
                if outcome.final == "AA":
                    self.on_applied(message)
        except BaseException as exc:  # noqa: BLE001 - reported by the drill
            self.error = exc
        finally:
            self._close()

    def _close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock, self.decoder = None, MLLPDecoder()

    def _exchange(self, raw: bytes) -> bytes | None:
        """One send and its ACK; None when the connection failed before an answer."""
        try:
            if self.sock is None:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.sock.settimeout(self.ack_timeout)
            self.sock.sendall(frame(raw))
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError("closed before the ACK")
                messages = self.decoder.feed(chunk)
                if messages:
                    return messages[0]
        except OSError:
            self._close()
            return None

    def _send(self, outcome: HL7Outcome) -> None:
        backoff = Backoff(self.give_up_after)
        while backoff.more():
            outcome.sends += 1
            ack = self._exchange(outcome.message.raw)
            if ack is None:
                outcome.unanswered += 1
                backoff.pause()
                continue
            msa = next((s.split("|") for s in ack.decode("utf-8", "replace").split("\r") if s.startswith("MSA|")), [])
            code = msa[1] if len(msa) > 1 else "??"
            if len(msa) > 2 and msa[2] != outcome.message.control_id:
                code = f"{code}(MSA-2 {msa[2]!r})"  # an ACK for another message: a protocol fault
            outcome.answers.append(code)
            if code in ("AA", "AR") or "MSA-2" in code:
                outcome.final = code
                return
            backoff.pause()  # AE: the receiver could not apply it now (its database restarting)


# ------------------------------------------------------------------------------------------- DICOM
STORE_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")
FIND_FINAL = re.compile(r"Received Final Find Response \(([^)]*)\)")
#: PS3.4 F.7.2.1.1 / F.7.2.2.2: the answers to an N-CREATE or N-SET resent after its answer was
#: lost, when the first one did arrive: "duplicate SOP instance" and "may no longer be updated".
DUPLICATE_SOP_INSTANCE = 0x0111
PROCESSING_FAILURE = 0x0110
MAY_NO_LONGER_BE_UPDATED = 0xA710


@dataclass
class StudyOutcome:
    study_instance_uid: str
    sop_instance_uids: list[str]
    paths: list[Path]
    success: set[str] = field(default_factory=set)  # SOP Instance UIDs answered Success
    accession: str = ""
    runs: int = 0  # storescu processes started
    failures: list[str] = field(default_factory=list)  # non-Success statuses seen
    mwl_queries: int = 0  # findscu runs
    mwl_answered: bool = False  # a final C-FIND response Success (0000) arrived
    mwl_found: bool = False  # ... and it held the order's scheduled step
    requested_procedure_id: str = ""  # from the worklist answer, for the MPPS (IHE RAD-6)
    scheduled_procedure_step_id: str = ""
    mpps_uid: str = ""
    mpps_requests: int = 0  # N-CREATE and N-SET requests sent
    mpps_created: str = ""  # "Success", or "Duplicate" (0111: a resend after a lost answer)
    mpps_completed: str = ""  # "Success", or "A710" (may no longer be updated: a resend after a lost answer)


class DicomSender(threading.Thread):
    """Sends a study of ``images`` instances for the first requested procedure of each applied
    order it is given (``offer``: the accession number, Study Instance UID and patient of the
    order, as a modality takes them from the worklist), with ``storescu`` (one association per
    try, the instances not yet answered Success), one study after another while the faults go on
    (until ``stop``), at most ``limit``."""

    def __init__(self, name: str, port: int, workdir: Path, images: int, stop: threading.Event, limit: int,
                 ae_title: str = "PACS", give_up_after: float = 600.0, pace: float = 0.0):
        super().__init__(name=name, daemon=True)
        self.pace = pace  # seconds between two exams: spreads them over the faults
        self.port = port
        self.workdir = Path(workdir)
        self.images = images
        self.stop = stop
        self.limit = limit
        self.ae_title = ae_title
        self.give_up_after = give_up_after
        self.queue: list[OrderMessage] = []
        self.cond = threading.Condition()
        self.studies: list[StudyOutcome] = []
        self.error: BaseException | None = None

    def offer(self, message: OrderMessage) -> None:
        with self.cond:
            if len(self.queue) < self.limit:
                self.queue.append(message)
                self.cond.notify_all()

    def run(self) -> None:
        try:
            done = 0
            while True:
                with self.cond:
                    while done >= len(self.queue) and not self.stop.is_set():
                        self.cond.wait(0.5)
                    if self.stop.is_set() or done >= len(self.queue):
                        return  # the faults are over: the study being sent was finished
                    message = self.queue[done]
                done += 1
                study = self._study(done, message)
                self._query_worklist(study)
                self._mpps_create(study, message)
                self.studies.append(self._send(study))
                self._mpps_complete(study)
                if self.pace and self.stop.wait(self.pace):
                    return
        except BaseException as exc:  # noqa: BLE001 - reported by the drill
            self.error = exc

    def _study(self, n: int, order: OrderMessage) -> StudyOutcome:
        study_uid = order.study_instance_uids[0]
        paths = write_study(self.workdir / f"study-{n:05d}", self.images, study_instance_uid=study_uid,
                            accession_number=order.accessions[0], patient_id=order.patient_id,
                            issuer_of_patient_id="SYNTHMRN", patient_name="Testpatient^Anna^Maria^^Ms",
                            birth_date="19800215", sex="F")
        uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths]
        return StudyOutcome(study_uid, uids, paths, accession=order.accessions[0],
                            mpps_uid=f"{study_uid}.9")

    def _query_worklist(self, study: StudyOutcome) -> None:
        """The worklist query for the exam's accession number (PS3.4 K.6.1.2): asked until a
        final response arrives.  The order was answered AA before it reached the modality, so a
        Success without its step is a broken promise (persist before acknowledging)."""
        out = self.workdir / f"mwl-{study.accession}"
        backoff = Backoff(self.give_up_after)
        env = {**os.environ, "TCP_NODELAY": "1"}
        while backoff.more():
            study.mwl_queries += 1
            out.mkdir(parents=True, exist_ok=True)
            for old in out.glob("*.dcm"):
                old.unlink()
            try:
                result = subprocess.run(
                    [dcmtk_tool("findscu"), "-v", "-W", "-aet", "DRILLCT", "-aec", self.ae_title, "-to", "30",
                     "-ta", "30", "-td", "60", "-X", "-od", str(out), "-k", f"AccessionNumber={study.accession}",
                     "-k", "StudyInstanceUID", "-k", "PatientID", "-k", "RequestedProcedureID",
                     "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
                     "127.0.0.1", str(self.port)], env=env, capture_output=True, text=True, timeout=120)
                output = result.stdout + result.stderr
            except subprocess.TimeoutExpired:
                output = ""
            final = FIND_FINAL.findall(output)
            if final and final[-1] == "Success":
                answers = [pydicom.dcmread(p) for p in sorted(out.glob("*.dcm"))]
                study.mwl_answered = True
                mine = [a for a in answers if a.get("AccessionNumber") == study.accession
                        and a.get("StudyInstanceUID") == study.study_instance_uid]
                study.mwl_found = bool(mine)
                if mine:
                    study.requested_procedure_id = str(mine[0].get("RequestedProcedureID", ""))
                    steps = mine[0].get("ScheduledProcedureStepSequence") or []
                    study.scheduled_procedure_step_id = str(steps[0].get("ScheduledProcedureStepID", "")) if steps else ""
                return
            backoff.pause()

    def _mpps(self, send) -> tuple[int, int] | None:
        """One MPPS request on its own association: (Status, ErrorID or 0), None without an answer."""
        ae = AE(ae_title="DRILLCT")
        ae.add_requested_context(ModalityPerformedProcedureStep)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        try:
            assoc = ae.associate("127.0.0.1", self.port, ae_title=self.ae_title)
        except OSError:
            return None
        if not assoc.is_established:
            return None
        try:
            status, _ = send(assoc)
            if not status or "Status" not in status:
                return None
            return int(status.Status), int(status.get("ErrorID", 0) or 0)
        finally:
            if assoc.is_established:
                assoc.release()
            ae.shutdown()

    def _retry_mpps(self, study: StudyOutcome, send, resent_answer: tuple[int, int]) -> str:
        """Asked until Success; after a lost answer, ``resent_answer`` (Status, ErrorID) means the
        first request did arrive."""
        backoff = Backoff(self.give_up_after)
        lost = False
        while backoff.more():
            study.mpps_requests += 1
            answer = self._mpps(send)
            if answer is not None and answer[0] == 0x0000:
                return "Success"
            if lost and answer == resent_answer:
                return "Duplicate" if answer[0] == DUPLICATE_SOP_INSTANCE else "A710"
            if answer is None:
                lost = True
            else:
                study.failures.append(f"MPPS 0x{answer[0]:04X}")
            backoff.pause()
        return ""

    def _mpps_create(self, study: StudyOutcome, order: OrderMessage) -> None:
        """N-CREATE IN PROGRESS for the exam (PS3.4 F.7.2.1, IHE RAD-6), naming the scheduled step
        the worklist gave (ScheduledStepAttributesSequence)."""
        create = n_create_for(study_instance_uid=study.study_instance_uid, accession_number=study.accession,
                              requested_procedure_id=study.requested_procedure_id,
                              scheduled_procedure_step_id=study.scheduled_procedure_step_id,
                              patient_id=order.patient_id, patient_name="Testpatient^Anna^Maria^^Ms",
                              station="DRILLCT")
        study.mpps_created = self._retry_mpps(
            study, lambda assoc: assoc.send_n_create(create, ModalityPerformedProcedureStep, study.mpps_uid),
            (DUPLICATE_SOP_INSTANCE, 0))

    def _mpps_complete(self, study: StudyOutcome) -> None:
        """N-SET COMPLETED listing the instances answered Success (PS3.4 F.7.2.2, IHE RAD-7)."""
        if not study.mpps_created:
            return
        done = n_set_for([(CT_IMAGE, uid) for uid in study.sop_instance_uids if uid in study.success])
        study.mpps_completed = self._retry_mpps(
            study, lambda assoc: assoc.send_n_set(done, ModalityPerformedProcedureStep, study.mpps_uid),
            (PROCESSING_FAILURE, MAY_NO_LONGER_BE_UPDATED))

    def _send(self, study: StudyOutcome) -> StudyOutcome:
        backoff = Backoff(self.give_up_after)
        env = {**os.environ, "TCP_NODELAY": "1"}
        while backoff.more():
            todo = [(uid, path) for uid, path in zip(study.sop_instance_uids, study.paths, strict=True) if uid not in study.success]
            if not todo:
                return study
            study.runs += 1
            try:
                result = subprocess.run([dcmtk_tool("storescu"), "-v", "-aet", "DRILLCT", "-aec", self.ae_title,
                                         "-to", "30", "-ta", "30", "-td", "60", "127.0.0.1", str(self.port),
                                         *(str(p) for _, p in todo)],
                                        env=env, capture_output=True, text=True, timeout=300)
                output = result.stdout + result.stderr
            except subprocess.TimeoutExpired as exc:
                output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
            # storescu sends the files in order, one C-STORE at a time: the n-th response is the n-th file's.
            for (uid, _), status in zip(todo, STORE_RESPONSE.findall(output), strict=False):
                if status == "Success":
                    study.success.add(uid)
                else:
                    study.failures.append(status)
            if len(study.success) < len(study.sop_instance_uids):
                backoff.pause()
        return study


# ----------------------------------------------------------------------------------------- reports
@dataclass
class SignedReport:
    accession: str
    patient_id: str
    sequence: int  # signing order (one signer: the order of the reports of each patient)
    confirmed_by: str  # "201" or "GET" (the answer was lost; the report was found signed)


class ReportSigner(threading.Thread):
    """Signs the final report of both requested procedures of each applied order it is given
    (``offer``), in order, one order after another while the faults go on (until ``stop``), at
    most ``limit`` orders."""

    def __init__(self, name: str, port: int, token_source, stop: threading.Event, limit: int,
                 give_up_after: float = 600.0, pace: float = 0.0):
        super().__init__(name=name, daemon=True)
        self.pace = pace  # seconds between two orders' reports: spreads them over the faults
        self.port = port
        self.token_source = token_source
        self.stop = stop
        self.limit = limit
        self.give_up_after = give_up_after
        self.queue: list[OrderMessage] = []
        self.cond = threading.Condition()
        self.signed: list[SignedReport] = []
        self.unsigned: list[tuple[str, str]] = []  # (accession, last error): given up
        self.requests = 0
        self.lost_answers = 0
        self.error: BaseException | None = None

    def offer(self, message: OrderMessage) -> None:
        with self.cond:
            if len(self.queue) < self.limit:
                self.queue.append(message)
                self.cond.notify_all()

    def run(self) -> None:
        try:
            self.token = self.token_source()
            done = 0
            while True:
                with self.cond:
                    while done >= len(self.queue) and not self.stop.is_set():
                        self.cond.wait(0.5)
                    if self.stop.is_set() or done >= len(self.queue):
                        return  # the faults are over: the order being reported was finished
                    message = self.queue[done]
                done += 1
                for accession in message.accessions:
                    self._sign(accession, message.patient_id)
                if self.pace and self.stop.wait(self.pace):
                    return
        except BaseException as exc:  # noqa: BLE001 - reported by the drill
            self.error = exc

    def _request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Token {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read() or b"{}")
            except ValueError:
                return exc.code, {}

    def _is_signed(self, accession: str) -> bool | None:
        """Whether the report is signed final (None: the question got no answer either)."""
        try:
            status, body = self._request("GET", f"/api/v1/reports/{accession}/")
        except (OSError, ValueError):
            return None
        if status != 200:
            return None
        return any(v.get("signed") and v.get("result_status") == "F" for v in body.get("versions", []))

    def _sign(self, accession: str, patient_id: str) -> None:
        backoff = Backoff(self.give_up_after, first=0.3, most=3.0)
        error = ""
        while backoff.more():
            self.requests += 1
            try:
                status, body = self._request("POST", "/api/v1/reports/", {
                    "accession_number": accession, "findings": "No acute finding.",
                    "impression": "Synthetic drill report.", "sign": "FINAL"})
            except (OSError, ValueError) as exc:  # no answer: was it signed before the web died?
                status, body, error = 0, {}, type(exc).__name__
            if status == 201:
                self.signed.append(SignedReport(accession, patient_id, len(self.signed), "201"))
                return
            if status in (0, 422) or status >= 500:
                if status == 0:
                    self.lost_answers += 1
                signed = self._is_signed(accession)
                if signed:
                    self.signed.append(SignedReport(accession, patient_id, len(self.signed), "GET"))
                    return
                error = error or f"HTTP {status} {body.get('error', '')}"[:200]
                backoff.pause()
                continue
            error = f"HTTP {status} {body}"[:300]
            if status == 404:  # the order is not visible yet: cannot be, it was answered AA
                backoff.pause()
                continue
            break
        self.unsigned.append((accession, error))
