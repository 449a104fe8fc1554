"""One patient's day through a running engine, from the outside, as the department's systems
see it: the EHR's order over MLLP, the modality's Modality Worklist query (dcmtk findscu),
MPPS and images (dcmtk storescu), the study reaching a real Orthanc VNA through the Celery
worker, a report signed through the dictation API reaching an MLLP sink as ORU^R01.

Every step talks to the engine's processes over their sockets; nothing calls engine code in the
test process.  ``Engine`` says where the processes listen and how to run ``manage.py`` in
the engine's own environment (for what an operator does on the command line: create a user and
an API token, run a health check, read a transfer's state).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from hl7gateway.mllp import MLLPDecoder, frame
from tests.support.mllp_sink import MLLPSink
from tests.support.mpps import CT_IMAGE, n_create_for, n_set_for
from tests.support.net import dcmtk_tool
from tests.support.orthanc import OrthancProcess, write_study

ROOT = Path(__file__).resolve().parents[2]
IMAGES = 5

# Synthetic patient and order: no real patient data.
ORDER = (
    "MSH|^~\\&|SMOKEEHR|SMOKEHOSP|PACS|RADIOLOGY|20260301081500||ORM^O01|SMOKE0001|P|2.3.1\r"
    "PID|1||SMK0001^^^SMOKEHOSP^MR||Smoketest^Sam||19800101|M\r"
    "PV1|1|O\r"
    "ORC|NW|SMKORD1|||SC||^^^20260302093000^^R\r"
    "OBR|1|SMKORD1||CTHEAD^CT head^LOCAL||||||||||||||SMKACC1||||||CT\r"
)
ACCESSION = "SMKACC1"
# The day's last message: the patient's demographics again, with escape sequences python-hl7
# cannot read in PID-5 (HL7 v2.5.1 2.7.4: \X..\ needs an even number of hex digits, \Q\ is no
# escape at all); its complaint quotes the field, which must reach no log line either.
BAD_ESCAPES = (
    "MSH|^~\\&|SMOKEEHR|SMOKEHOSP|PACS|RADIOLOGY|20260301180000||ADT^A08|SMOKE0002|P|2.3.1\r"
    "EVN|A08|20260301180000\r"
    "PID|1||SMK0001^^^SMOKEHOSP^MR||Smoketest\\X4G\\^Sam\\Q\\||19800101|M\r"
    "PV1|1|O\r"
)
# What of the day's patient and order no log line may carry (the name parts, the patient ID,
# the birth date, the accession number).
PATIENT_VALUES = ("Smoketest", "SMK0001", "19800101", ACCESSION)


@dataclass
class Engine:
    python: Path  # the engine environment's interpreter
    env: dict[str, str]  # the processes' environment
    web: int
    mllp: int
    dicom: int
    ae_title: str = "PACS"

    def manage(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.python), "manage.py", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def shell(self, code: str) -> str:
        result = self.manage("shell", "-c", code)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout.strip()


def wait_port(port: int, deadline: float, processes) -> None:
    while time.monotonic() < deadline:
        processes.assert_running()
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on port {port}\n{processes.tail()}")


def wait_until(predicate, timeout: float, what: str, processes):
    """Poll ``predicate`` until it is true; fail at once when one of ``processes`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        processes.assert_running()
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}\n{processes.tail()}")


def send_order(engine: Engine, message: str = ORDER) -> str:
    """The EHR's ORM^O01 (or ``message``) over MLLP; returns the ACK (the engine stores and
    applies, then answers)."""
    decoder = MLLPDecoder()
    with socket.create_connection(("127.0.0.1", engine.mllp), timeout=30) as s:
        s.sendall(frame(message.encode()))
        while True:
            chunk = s.recv(65536)
            assert chunk, "the MLLP listener closed the connection before its ACK"
            messages = decoder.feed(chunk)
            if messages:
                return messages[0].decode()


def query_worklist(engine: Engine, out: Path) -> Dataset:
    """The modality's MWL C-FIND (dcmtk findscu) for the day's CT steps; one answer expected."""
    out.mkdir(parents=True)
    result = subprocess.run(
        [dcmtk_tool("findscu"), "-W", "-aet", "CT1", "-aec", engine.ae_title, "-X", "-od", str(out),
         "-k", "ScheduledProcedureStepSequence[0].Modality=CT",
         "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20260302",
         "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
         "-k", "PatientName", "-k", "PatientID", "-k", "IssuerOfPatientID", "-k", "PatientBirthDate",
         "-k", "PatientSex", "-k", "AccessionNumber", "-k", "StudyInstanceUID", "-k", "RequestedProcedureID",
         "127.0.0.1", str(engine.dicom)],
        env={**engine.env, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    answers = sorted(out.glob("*.dcm"))
    assert len(answers) == 1, (result.stdout[-2000:], result.stderr[-2000:])
    return pydicom.dcmread(answers[0])


def _mpps(engine: Engine, item: Dataset, instance_uids: list[str], series_uid: str) -> None:
    """MPPS N-CREATE IN PROGRESS then N-SET COMPLETED listing every instance (PS3.4 F.7)."""
    create = n_create_for(
        study_instance_uid=item.StudyInstanceUID, accession_number=item.AccessionNumber,
        requested_procedure_id=item.RequestedProcedureID,
        scheduled_procedure_step_id=item.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID,
        patient_name=str(item.PatientName), patient_id=item.PatientID, birth_date=item.PatientBirthDate,
        sex=item.PatientSex, start_date="20260302", start_time="093000")
    done = n_set_for([(CT_IMAGE, uid) for uid in instance_uids], series_instance_uid=series_uid,
                     end_date="20260302")

    ae = AE(ae_title="CT1")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", engine.dicom, ae_title=engine.ae_title)
    assert assoc.is_established, "MPPS association refused"
    try:
        status, _ = assoc.send_n_create(create, ModalityPerformedProcedureStep, "2.25.81726354")
        assert status and status.Status == 0x0000, status
        status, _ = assoc.send_n_set(done, ModalityPerformedProcedureStep, "2.25.81726354")
        assert status and status.Status == 0x0000, status
    finally:
        assoc.release()


def acquire(engine: Engine, item: Dataset, workdir: Path) -> list[str]:
    """The modality's images (dcmtk storescu) with the worklist's identifiers, then its MPPS."""
    paths = write_study(workdir, IMAGES, study_instance_uid=item.StudyInstanceUID,
                        accession_number=item.AccessionNumber, patient_id=item.PatientID,
                        issuer_of_patient_id=item.get("IssuerOfPatientID", ""),
                        patient_name=str(item.PatientName), birth_date=item.PatientBirthDate, sex=item.PatientSex)
    result = subprocess.run([dcmtk_tool("storescu"), "-aet", "CT1", "-aec", engine.ae_title, "127.0.0.1",
                             str(engine.dicom), *map(str, paths)],
                            env={**engine.env, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    uids = [ds.SOPInstanceUID for ds in datasets]
    _mpps(engine, item, uids, datasets[0].SeriesInstanceUID)
    return uids


def sign_report(engine: Engine, accession: str) -> dict:
    """A radiologist account (as an administrator makes one), its dictation token, then the
    final report through the dictation API (``POST /api/v1/reports/``)."""
    engine.shell(
        "from django.contrib.auth.models import Group, User\n"
        "from project.access import RADIOLOGIST\n"
        "u = User.objects.create_user('smoke_rad', first_name='Rad', last_name='Smoke')\n"
        "u.groups.add(Group.objects.get(name=RADIOLOGIST))\n")
    token = engine.manage("create_api_token", "smoke_rad", "--name", "smoke dictation")
    assert token.returncode == 0, token.stderr[-2000:]
    body = json.dumps({"accession_number": accession, "findings": "No acute finding.",
                       "impression": "Normal CT head.", "sign": "FINAL"}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{engine.web}/api/v1/reports/", data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Token {token.stdout.strip()}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 201
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"dictation API answered {exc.code}: {exc.read()[:2000]!r}") from exc


def health(engine: Engine, commands: dict[str, list[str]]) -> dict[str, dict]:
    """Each process type's health check (the command compose or an operator runs); all must pass."""
    answers = {}
    for process, command in commands.items():
        result = subprocess.run(command, cwd=ROOT, env=engine.env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, (process, result.stdout[-1000:], result.stderr[-2000:])
        answers[process] = json.loads(result.stdout.strip().splitlines()[-1])
    return answers


def transfer_states(engine: Engine) -> list[str]:
    return json.loads(engine.shell(
        "import json\nfrom pacs.models import Transfer\n"
        "print(json.dumps(sorted(t.status for t in Transfer.objects.all())))").splitlines()[-1])


def a_day(engine: Engine, orthanc: OrthancProcess, sink: MLLPSink, workdir: Path, processes) -> None:
    """The whole day.  ``processes`` (``assert_running()``, ``tail()``): the engine's processes,
    checked while waiting and quoted in a failure."""
    ack = send_order(engine)
    assert "MSA|AA|SMOKE0001" in ack, ack

    item = query_worklist(engine, workdir / "mwl")
    assert (item.AccessionNumber, item.PatientID, str(item.PatientName)) == (ACCESSION, "SMK0001", "Smoketest^Sam")
    assert item.StudyInstanceUID.startswith("2.25.")

    uids = acquire(engine, item, workdir / "images")
    wait_until(lambda: orthanc.count_instances() == IMAGES, 120, "the study in the VNA", processes)
    assert sorted(orthanc.sop_instance_uids()) == sorted(uids)
    tags = orthanc.instance_tags(uids[0])
    assert (tags["AccessionNumber"], tags["PatientID"]) == (ACCESSION, "SMK0001")
    wait_until(lambda: transfer_states(engine) == ["COMMITTED"], 120, "the VNA's storage commitment", processes)

    report = sign_report(engine, ACCESSION)
    assert report["version"]["result_status"] == "F"
    wait_until(lambda: sink.control_ids(), 120, "the ORU^R01 at the EHR", processes)
    (oru,) = sink.wait_for(1, timeout=5)
    assert oru.segment("MSH")[9].startswith("ORU^R01"), oru.text
    obr = oru.segment("OBR")
    assert obr[25] == "F" and ACCESSION in oru.text, oru.text
    assert "Normal CT head." in oru.text

    # Demographics with escape sequences python-hl7 cannot read: answered (and stored) like any
    # message; the production log scan after the day finds the name in no process's output.
    ack = send_order(engine, BAD_ESCAPES)
    assert "|SMOKE0002" in ack and any(f"MSA|{code}|" in ack for code in ("AA", "AE", "AR")), ack
