"""A real Celery worker process (solo pool) on the pytest database and Redis DB of this engineer,
and a real Orthanc VNA, for the routing tests."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone
from pydicom.uid import generate_uid

from pacs.models import Study
from pacs.services import completion
from ris.models import PatientIdentifier
from tests.celery_worker import CeleryWorker
from tests.pacs.imaging_helpers import port
from tests.pacs.mwl_data import make_patient, make_step
from tests.pacs.orthanc import OrthancProcess, storescu, write_study

ROOT = Path(__file__).resolve().parents[2]
BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")


def Worker(workdir: Path, env: dict) -> CeleryWorker:
    """The routing tests' worker: solo pool, one task at a time."""
    return CeleryWorker(workdir, env, name="h4test", args=["-P", "solo", "-c", "1", "--without-heartbeat",
                                                           "--without-gossip", "--without-mingle"])


@pytest.fixture
def routing_settings(settings):
    settings.DICOM_AE_TITLE = "PACS"
    settings.VNA_DESTINATIONS = ""
    settings.STUDY_QUIET_PERIOD_SECONDS = 1
    settings.TRANSFER_RETRY_BASE_SECONDS = 1.0
    settings.TRANSFER_RETRY_MAX_SECONDS = 2.0
    settings.TRANSFER_LEASE_SECONDS = 4
    settings.TRANSFER_MAX_ATTEMPTS = 10
    settings.VNA_DICOM_SENDER = "engine"
    return settings


@pytest.fixture(params=["engine", "dcmtk"])
def sender(request, routing_settings):
    """Run the test with each C-STORE sender (VNA_DICOM_SENDER); request it before ``worker``."""
    routing_settings.VNA_DICOM_SENDER = request.param
    return request.param


@pytest.fixture
def worker(transactional_db, store_dir, routing_settings, tmp_path):
    """A Celery worker process on the test database (DATABASE_URL names test_<db>)."""
    redis.Redis.from_url(BROKER).flushdb()
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CELERY_BROKER_URL": BROKER,
        "STORAGE_DIR": str(store_dir),
        "DICOM_AE_TITLE": "PACS",
        "VNA_DESTINATIONS": "",
        "TRANSFER_RETRY_BASE_SECONDS": "1",
        "TRANSFER_RETRY_MAX_SECONDS": "2",
        "TRANSFER_LEASE_SECONDS": "4",
        "TRANSFER_MAX_ATTEMPTS": "10",
        "VNA_DICOM_SENDER": routing_settings.VNA_DICOM_SENDER,
        "TCP_NODELAY": "1",
    }
    w = Worker(tmp_path, env).start()
    try:
        yield w
    finally:
        w.stop()
        redis.Redis.from_url(BROKER).flushdb()


@pytest.fixture
def orthanc(engine, tmp_path):
    """Orthanc as the VNA; it knows the engine's AE (for the N-EVENT-REPORT)."""
    vna = OrthancProcess(tmp_path / "orthanc", engine_aet="PACS", engine_port=engine.server_address[1])
    vna.start()
    try:
        yield vna
    finally:
        vna.stop()


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2, message: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting: {message}")


def storage_dir() -> Path:
    return Path(settings.STORAGE_DIR)


def send_matched_study(engine, tmp_path, n=5, *, patient_name="DOE^JOHNNY", **kwargs):
    """Store a study of ``n`` CT images (dcmtk's storescu) that matches a scheduled step of patient P1."""
    known = PatientIdentifier.objects.filter(id_number="P1", assigning_authority="HOSP").first()
    patient = known.patient if known else make_patient("DOE^JOHN", "P1")
    step = make_step(patient, accession=f"A{generate_uid()[-10:]}", modality="CT")
    rp = step.requested_procedure
    paths = write_study(tmp_path / generate_uid(), n, study_instance_uid=rp.study_instance_uid,
                        accession_number=rp.accession_number, patient_id="P1", patient_name=patient_name, **kwargs)
    proc = storescu(port(engine), paths)
    assert proc.returncode == 0, proc.stderr
    return Study.objects.get(study_instance_uid=rp.study_instance_uid), paths


def complete_now(study):
    """Complete the study as the quiet-period sweep would, without waiting for it."""
    assert completion.check_study(study.pk, now=timezone.now() + dt.timedelta(seconds=5))
