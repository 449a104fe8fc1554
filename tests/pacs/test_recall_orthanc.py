"""A study purged locally after archiving, fetched back from the VNA on demand: a real Orthanc as
the VNA, a real Celery worker, the engine's AE and web server.  The study is stored, routed to
Orthanc and committed (ARCHIVED), its local files purged; then a DICOMweb client (WADO-RS,
dicomweb-client) or a workstation (dcmtk's movescu / getscu) asks for it: the engine recalls
it by C-MOVE to its own AE, answers "retry later" meanwhile (503 + Retry-After; 0xA702), and
serves it once it is back."""

from __future__ import annotations

import datetime as dt
import io

import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from django.utils import timezone
from pydicom import dcmread

from audit import trail
from audit.models import AuditRecord
from pacs import storage
from pacs.models import DicomNode, Instance, Prior, Study, Transfer, VnaDestination
from pacs.models import images as im
from pacs.models import priors as pr
from pacs.models import transfers as tr
from pacs.services.routing import archive
from project.access import RADIOLOGIST
from project.auditing import events
from tests import factories
from tests.support.dicom import retrieve_tool, start_storescp
from tests.support.net import free_port
from tests.support.routing import complete_now, send_matched_study
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.socket, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]

KEY = "recall-test-token-0123456789"


@pytest.fixture
def purged(engine, orthanc, worker, live_server, settings, tmp_path):
    """A study of 3 CT images (its PatientName corrected on the way to the VNA) archived in
    Orthanc and purged here; a radiologist's API token for DICOMweb."""
    from worklist.models import ApiToken

    settings.DICOM_UNKNOWN_AE_FROM = ["127.0.0.1"]
    settings.DICOMWEB_BASE_URL = f"{live_server.url}/dicomweb"
    settings.ARCHIVE_RETENTION_DAYS = 7
    VnaDestination.objects.create(
        name="orthanc", kind=tr.KIND_DICOM, ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port
    )
    study, paths = send_matched_study(engine, tmp_path, 3)
    complete_now(study)
    wait_for(
        lambda: Study.objects.get(pk=study.pk).status == im.ARCHIVED,
        90,
        message="study archived",
        detail=lambda: worker.log()[-3000:],
    )
    files = [storage.absolute_path(p) for p in Instance.objects.filter(study=study).values_list("path", flat=True)]
    # The digests of the versions received (as a resend would have recorded them): the archive's
    # corrected versions differ from them.
    for instance in Instance.objects.filter(study=study):
        instance.dataset_sha256 = storage.data_set_sha256(storage.absolute_path(instance.path))
        instance.save(update_fields=["dataset_sha256"])
    assert archive.purge_archived(now=timezone.now() + dt.timedelta(days=8)) == 1
    study.refresh_from_db()
    assert study.purged_at is not None and not any(f.exists() for f in files)
    user = factories.user("viewer", RADIOLOGIST)
    ApiToken.objects.create(user=user, name="viewer", key_sha256=ApiToken.digest(KEY))
    sent = {ds.SOPInstanceUID: ds for ds in (dcmread(p) for p in paths)}
    return {"study": study, "sent": sent, "url": f"{live_server.url}/dicomweb", "files": files}


def _get(url: str, **headers):
    with requests.Session() as session:
        return session.get(url, headers={"Authorization": f"Token {KEY}", **headers}, timeout=60)


def _recall(uid: str) -> Prior | None:
    return Prior.objects.filter(purpose=pr.RECALL, study_instance_uid=uid).order_by("-pk").first()


def test_wado_rs_of_a_purged_study_is_503_then_served_from_the_recalled_copy(purged, orthanc, worker, settings, client):
    settings.RECALL_WAIT_SECONDS = 0
    settings.RECALL_RETRY_AFTER_SECONDS = 7
    uid = purged["study"].study_instance_uid

    first = _get(f"{purged['url']}/studies/{uid}", Accept='multipart/related; type="application/dicom"')
    assert first.status_code == 503, first.text
    assert first.headers["Retry-After"] == "7"
    assert "purged here after archiving" in first.json()["error"]
    assert "being fetched from the archive" in first.json()["error"]
    # QIDO-RS answers from the index meanwhile: it needs no files.
    found = _get(f"{purged['url']}/studies?StudyInstanceUID={uid}", Accept="application/dicom+json")
    assert found.status_code == 200 and len(found.json()) == 1

    wait_for(
        lambda: _recall(uid) is not None and _recall(uid).status == pr.READY,
        90,
        message="recall ready",
        detail=lambda: worker.log()[-3000:],
    )
    fetch = _recall(uid)
    assert fetch.requested_procedure_id is None and fetch.source.name == "orthanc" and fetch.attempts == 1
    assert fetch.requested_by == "viewer (DICOMweb)"
    study = Study.objects.get(pk=purged["study"].pk)
    assert study.purged_at is None and study.recalled_at is not None and study.status == im.ARCHIVED
    assert all(f.exists() for f in purged["files"])
    assert not Transfer.objects.filter(study=study).exclude(status=tr.COMMITTED).exists()  # not routed back

    with requests.Session() as session:
        dicomweb = DICOMwebClient(url=purged["url"], session=session, headers={"Authorization": f"Token {KEY}"})
        retrieved = dicomweb.retrieve_study(uid)
    assert {ds.SOPInstanceUID for ds in retrieved} == set(purged["sent"])
    for ds in retrieved:
        assert ds.PixelData == purged["sent"][ds.SOPInstanceUID].PixelData
        assert ds.PatientName == "DOE^JOHN"  # the archive's version: corrected on the way to the VNA
        # The data set served is the one the archive holds, element for element.
        found = requests.post(f"{orthanc.url}/tools/lookup", data=ds.SOPInstanceUID, timeout=30).json()
        oid = next(f["ID"] for f in found if f["Type"] == "Instance")
        archived = dcmread(io.BytesIO(requests.get(f"{orthanc.url}/instances/{oid}/file", timeout=30).content))
        assert ds == archived
    # No conflict is recorded for the corrected version: there was no local one to compare with.
    assert not study.store_conflicts.exists()

    # The retention clock starts again at the recall.
    assert archive.purge_archived(now=timezone.now() + dt.timedelta(days=3)) == 0
    assert archive.purge_archived(now=study.recalled_at + dt.timedelta(days=8)) == 1

    # The recall is on the fetches page with its state and attempts, and on the audit trail.
    from django.urls import reverse

    from project.access import ADMINISTRATOR

    client.force_login(factories.user("fetches-admin", ADMINISTRATOR))
    page = client.get(reverse("imaging:priors")).content.decode()
    assert 'data-status="READY" data-purpose="recall"' in page and "viewer (DICOMweb)" in page
    trail.flush()
    (asked,) = AuditRecord.records.filter(event_id=events.INSTANCES_TRANSFERRED.value, action=events.EXECUTE)
    assert asked.actor == "viewer" and asked.destination == f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
    assert asked.objects[-1]["id"] == uid and {p.patient_id for p in asked.patients.all()} == {"P1"}


def test_wado_uri_waits_a_short_bounded_time_for_a_quick_recall(purged, settings):
    settings.RECALL_WAIT_SECONDS = 60
    sop = sorted(purged["sent"])[0]
    ds = purged["sent"][sop]
    answer = _get(
        f"{purged['url']}/wado?requestType=WADO&studyUID={ds.StudyInstanceUID}"
        f"&seriesUID={ds.SeriesInstanceUID}&objectUID={sop}&contentType=application/dicom"
    )
    assert answer.status_code == 200, answer.text
    assert dcmread(io.BytesIO(answer.content)).PixelData == ds.PixelData
    assert _recall(ds.StudyInstanceUID).status == pr.READY


def test_the_vna_down_the_recall_retries_with_the_reason_and_the_client_gets_503(purged, orthanc, worker, settings):
    settings.RECALL_WAIT_SECONDS = 0
    orthanc.stop()
    uid = purged["study"].study_instance_uid
    url = f"{purged['url']}/studies/{uid}/metadata"

    assert _get(url).status_code == 503
    wait_for(
        lambda: _recall(uid) is not None and _recall(uid).status == pr.RETRYING and _recall(uid).reason,
        60,
        message="recall retrying",
        detail=lambda: worker.log()[-3000:],
    )
    fetch = _recall(uid)
    assert "no association with dicom://ORTHANC@127.0.0.1" in fetch.reason
    again = _get(url)
    assert again.status_code == 503, again.text  # not a false 200, not a 500
    assert int(again.headers["Retry-After"]) >= 1
    assert "failed: no association" in again.json()["error"]
    assert Prior.objects.filter(purpose=pr.RECALL, study_instance_uid=uid).count() == 1  # one open recall
    assert Study.objects.get(pk=purged["study"].pk).purged_at is not None


def test_a_purged_study_no_archive_holds_is_404_with_the_reason(purged, settings):
    settings.RECALL_WAIT_SECONDS = 0
    VnaDestination.objects.update(enabled=False)
    uid = purged["study"].study_instance_uid
    answer = _get(f"{purged['url']}/studies/{uid}")
    assert answer.status_code == 404
    assert "no enabled DICOM archive known to hold it" in answer.json()["error"]
    assert _recall(uid) is None


# --- Query/Retrieve ---------------------------------------------------------------------------------
def test_movescu_of_a_purged_study_is_a702_then_moved_once_recalled(purged, worker, engine, settings, tmp_path):
    settings.RECALL_WAIT_SECONDS = 0
    uid = purged["study"].study_instance_uid
    DicomNode.objects.create(ae_title="WS1", host="127.0.0.1", allow_query_retrieve=True, allow_store=False)
    port = free_port()
    DicomNode.objects.create(ae_title="STORESCP", host="127.0.0.1", port=port, allow_store=False)
    scp = start_storescp(port, tmp_path / "moved")
    try:
        refused = retrieve_tool(
            "movescu",
            engine,
            "-S",
            ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uid}"],
            extra=["-d", "-aem", "STORESCP"],
        )
        output = (refused.stdout + refused.stderr).lower()
        assert "0xa702" in output and "being fetched from the archive; retry in" in output, output[-2000:]
        wait_for(
            lambda: _recall(uid) is not None and _recall(uid).status == pr.READY,
            90,
            message="recall ready",
            detail=lambda: worker.log()[-3000:],
        )
        assert _recall(uid).requested_by == "WS1 (C-MOVE)"
        moved = retrieve_tool(
            "movescu", engine, "-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uid}"], extra=["-aem", "STORESCP"]
        )
    finally:
        scp.terminate()
        scp.wait(10)
    assert moved.returncode == 0, moved.stderr
    received = [dcmread(p) for p in (tmp_path / "moved").iterdir()]
    assert {ds.SOPInstanceUID for ds in received} == set(purged["sent"])
    assert all(ds.PixelData == purged["sent"][ds.SOPInstanceUID].PixelData for ds in received)


def test_getscu_of_a_purged_study_waits_for_a_quick_recall(purged, engine, settings, tmp_path):
    settings.RECALL_WAIT_SECONDS = 60
    uid = purged["study"].study_instance_uid
    DicomNode.objects.create(ae_title="WS1", host="127.0.0.1", allow_query_retrieve=True, allow_store=False)
    out = tmp_path / "got"
    out.mkdir()
    proc = retrieve_tool(
        "getscu",
        engine,
        "-S",
        ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={uid}"],
        extra=["-od", str(out)],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    received = [dcmread(p) for p in out.iterdir()]
    assert {ds.SOPInstanceUID for ds in received} == set(purged["sent"])
    assert all(ds.PixelData == purged["sent"][ds.SOPInstanceUID].PixelData for ds in received)
