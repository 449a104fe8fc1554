"""Recall of a study purged after archiving, without a VNA that answers: the service's decisions
against PostgreSQL (one open recall per study, none without an archive, a new one after a
failure, the study held again only when every file is back, retention from the recall), and a
dcmtk movescu naming a held and a purged study (the held one sent, the purged one failed)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import transaction
from django.utils import timezone
from pydicom import dcmread
from pydicom.uid import generate_uid

from pacs import storage
from pacs.models import DicomNode, Instance, Prior, Study, Transfer, VnaDestination
from pacs.models import images as im
from pacs.models import priors as pr
from pacs.models import transfers as tr
from pacs.services import priors, recall
from pacs.services.routing import archive
from tests.support.dicom import port_of, retrieve_tool, start_storescp
from tests.support.net import free_port
from tests.support.orthanc import storescu, write_study

pytestmark = [pytest.mark.socket, pytest.mark.django_db(transaction=True)]


def _stored(engine, tmp_path, n: int = 2) -> Study:
    uid = generate_uid()
    paths = write_study(tmp_path / uid, n, study_instance_uid=uid, patient_id="RCL001", accession_number="RCL1")
    proc = storescu(port_of(engine), paths)
    assert proc.returncode == 0, proc.stderr
    return Study.objects.get(study_instance_uid=uid)


def _archived_and_purged(study: Study, vna: VnaDestination | None) -> None:
    """As routing and the purge leave it: committed by ``vna`` (if any), archived, files gone."""
    now = timezone.now()
    Study.objects.filter(pk=study.pk).update(status=im.ARCHIVED, archived_at=now - dt.timedelta(days=30))
    if vna is not None:
        Transfer.objects.create(study=study, destination=vna, batch=1, status=tr.COMMITTED, next_attempt_at=now)
    for path in Instance.objects.filter(study=study).values_list("path", flat=True):
        storage.remove_instance_file(path)
    Study.objects.filter(pk=study.pk).update(purged_at=now - dt.timedelta(days=1))


@pytest.fixture
def away(routing_settings):
    """A DICOM VNA nothing listens for."""
    return VnaDestination.objects.create(
        name="away", kind=tr.KIND_DICOM, ae_title="AWAY", host="127.0.0.1", port=free_port()
    )


def test_one_open_recall_per_study_none_without_an_archive_a_new_one_after_a_failure(engine, broker, away, tmp_path):
    held, purged, orphan = (_stored(engine, tmp_path) for _ in range(3))
    _archived_and_purged(purged, away)
    _archived_and_purged(orphan, None)

    assert recall.request(held.study_instance_uid, actor="u", via="DICOMweb").state == recall.HELD
    unavailable = recall.request(orphan.study_instance_uid, actor="u", via="DICOMweb")
    assert unavailable.state == recall.UNAVAILABLE and "no enabled DICOM archive" in unavailable.reason

    first = recall.request(purged.study_instance_uid, actor="u", via="DICOMweb")
    second = recall.request(purged.study_instance_uid, actor="WS1", via="C-MOVE")
    assert first.state == second.state == recall.FETCHING and first.fetch_id == second.fetch_id
    fetch = Prior.objects.get(pk=first.fetch_id)
    assert fetch.purpose == pr.RECALL and fetch.source == away and fetch.requested_by == "u (DICOMweb)"
    assert broker.llen("celery") >= 1  # the fetch task was queued on commit

    # The VNA does not answer: retried with the reason, the client told to come back later.
    assert priors.run_fetch(fetch.pk) == pr.RETRYING
    told = recall.request(purged.study_instance_uid, actor="u", via="DICOMweb")
    assert told.state == recall.FETCHING and "no association with dicom://AWAY@127.0.0.1" in told.reason
    assert told.retry_after >= 1
    # Given up: the next request starts a new recall.
    Prior.objects.filter(pk=fetch.pk).update(status=pr.FAILED)
    again = recall.request(purged.study_instance_uid, actor="u", via="DICOMweb")
    assert again.state == recall.FETCHING and again.fetch_id != fetch.pk


def test_held_again_only_when_every_file_is_back_and_retention_counts_from_the_recall(engine, tmp_path, settings):
    settings.ARCHIVE_RETENTION_DAYS = 7
    study = _stored(engine, tmp_path, 2)
    keep = {i.path: storage.absolute_path(i.path).read_bytes() for i in Instance.objects.filter(study=study)}
    _archived_and_purged(study, None)
    first, second = sorted(keep)
    storage.absolute_path(first).write_bytes(keep[first])
    with transaction.atomic():
        assert archive.restore_purged(study.study_instance_uid) is False  # one file is still missing
    storage.absolute_path(second).write_bytes(keep[second])
    with transaction.atomic():
        assert archive.restore_purged(study.study_instance_uid) is True
    study.refresh_from_db()
    assert study.purged_at is None and study.recalled_at is not None and study.status == im.ARCHIVED
    assert archive.purge_archived(now=timezone.now() + dt.timedelta(days=1)) == 0  # archived 30 days ago
    assert archive.purge_archived(now=timezone.now() + dt.timedelta(days=8)) == 1


def test_movescu_of_a_held_and_a_purged_study_sends_the_held_one_and_fails_the_other(
    engine, broker, away, settings, tmp_path
):
    settings.RECALL_WAIT_SECONDS = 0
    held, purged = _stored(engine, tmp_path, 2), _stored(engine, tmp_path, 3)
    _archived_and_purged(purged, away)
    DicomNode.objects.create(ae_title="WS1", host="127.0.0.1", allow_query_retrieve=True, allow_store=False)
    port = free_port()
    DicomNode.objects.create(ae_title="STORESCP", host="127.0.0.1", port=port, allow_store=False)
    scp = start_storescp(port, tmp_path / "moved")
    try:
        proc = retrieve_tool(
            "movescu",
            engine,
            "-S",
            ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={held.study_instance_uid}\\{purged.study_instance_uid}"],
            extra=["-d", "-aem", "STORESCP"],
        )
    finally:
        scp.terminate()
        scp.wait(10)
    output = (proc.stdout + proc.stderr).lower()
    assert "0xb000" in output, output[-2000:]
    received = {dcmread(p).StudyInstanceUID for p in (tmp_path / "moved").iterdir()}
    assert received == {held.study_instance_uid}
    assert len(list((tmp_path / "moved").iterdir())) == 2
    fetch = Prior.objects.get(purpose=pr.RECALL, study_instance_uid=purged.study_instance_uid)
    assert fetch.requested_by == "WS1 (C-MOVE)" and fetch.status == pr.SCHEDULED
