"""A study purged locally after archiving in a VNA the engine reaches by DICOMweb only (a
destination of kind STOW-RS), fetched back on demand: a real Orthanc with its DICOMweb plug-in
as the VNA, a real Celery worker, the engine's AE and web server.  The study is stored, sent to
Orthanc by STOW-RS (committed: every instance in the answer's ReferencedSOPSequence), its local
files purged; a DICOMweb client asks for it; the engine recalls it by WADO-RS Retrieve Study
(PS3.18 10.4), answers "retry later" meanwhile (503 + Retry-After) and serves it once it is back."""

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
from pacs.models import Instance, Prior, Study, Transfer, VnaDestination
from pacs.models import images as im
from pacs.models import priors as pr
from pacs.models import transfers as tr
from pacs.services import recall
from pacs.services.routing import archive
from project.access import RADIOLOGIST
from project.auditing import events
from tests import factories
from tests.support.orthanc import OrthancProcess
from tests.support.routing import complete_now, send_matched_study
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.socket, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]

KEY = "recall-web-test-token-0123456789"




@pytest.fixture
def purged(engine, web_vna, worker, live_server, settings, tmp_path):
    """A study of 3 CT images archived in the STOW-RS VNA and purged here; a radiologist's API
    token for DICOMweb."""
    from worklist.models import ApiToken

    settings.DICOM_UNKNOWN_AE_FROM = ["127.0.0.1"]
    settings.DICOMWEB_BASE_URL = f"{live_server.url}/dicomweb"
    settings.ARCHIVE_RETENTION_DAYS = 7
    vna = VnaDestination.objects.create(name="web-vna", kind=tr.KIND_STOW, url=f"{web_vna.url}/dicom-web")
    study, paths = send_matched_study(engine, tmp_path, 3)
    complete_now(study)
    wait_for(lambda: Study.objects.get(pk=study.pk).status == im.ARCHIVED, 90, message="study archived",
             detail=lambda: worker.log()[-3000:])
    assert Transfer.objects.get(study=study).destination == vna
    files = [storage.absolute_path(p) for p in Instance.objects.filter(study=study).values_list("path", flat=True)]
    assert archive.purge_archived(now=timezone.now() + dt.timedelta(days=8)) == 1
    study.refresh_from_db()
    assert study.purged_at is not None and not any(f.exists() for f in files)
    user = factories.user("viewer", RADIOLOGIST)
    ApiToken.objects.create(user=user, name="viewer", key_sha256=ApiToken.digest(KEY))
    sent = {ds.SOPInstanceUID: ds for ds in (dcmread(p) for p in paths)}
    return {"study": study, "sent": sent, "url": f"{live_server.url}/dicomweb", "files": files, "vna": vna}


def _get(url: str, **headers):
    with requests.Session() as session:
        return session.get(url, headers={"Authorization": f"Token {KEY}", **headers}, timeout=60)


def _recall(uid: str) -> Prior | None:
    return Prior.objects.filter(purpose=pr.RECALL, study_instance_uid=uid).order_by("-pk").first()


def test_a_stow_vna_holds_the_purged_study_and_it_is_recalled_by_wado_rs(purged, web_vna, worker, settings):
    settings.RECALL_WAIT_SECONDS = 0
    uid = purged["study"].study_instance_uid
    vna = purged["vna"]
    assert recall.archives_of(purged["study"]) == [vna]  # committed by STOW-RS

    first = _get(f"{purged['url']}/studies/{uid}", Accept='multipart/related; type="application/dicom"')
    assert first.status_code == 503, first.text
    assert "being fetched from the archive" in first.json()["error"]

    wait_for(lambda: _recall(uid) is not None and _recall(uid).status == pr.READY, 90, message="recall ready",
             detail=lambda: worker.log()[-3000:])
    fetch = _recall(uid)
    assert fetch.source == vna and fetch.attempts == 1 and fetch.requested_by == "viewer (DICOMweb)"
    study = Study.objects.get(pk=purged["study"].pk)
    assert study.purged_at is None and study.recalled_at is not None and study.status == im.ARCHIVED
    assert all(f.exists() for f in purged["files"])
    assert not Transfer.objects.filter(study=study).exclude(status=tr.COMMITTED).exists()  # not routed back
    assert not study.store_conflicts.exists()

    with requests.Session() as session:
        dicomweb = DICOMwebClient(url=purged["url"], session=session, headers={"Authorization": f"Token {KEY}"})
        retrieved = dicomweb.retrieve_study(uid)
    assert {ds.SOPInstanceUID for ds in retrieved} == set(purged["sent"])
    for ds in retrieved:
        assert ds.PixelData == purged["sent"][ds.SOPInstanceUID].PixelData
        # The data set served is the one the archive holds, element for element.
        assert ds == dcmread(io.BytesIO(_archived_file(web_vna, ds.SOPInstanceUID)))

    # The recall asked the VNA by its URL, and what came back is on the audit trail.
    trail.flush()
    (asked,) = AuditRecord.records.filter(event_id=events.INSTANCES_TRANSFERRED.value, action=events.EXECUTE)
    assert asked.actor == "viewer" and asked.destination == vna.url and asked.objects[-1]["id"] == uid
    (back,) = AuditRecord.records.filter(event_id=events.INSTANCES_TRANSFERRED.value, action=events.CREATE,
                                         actor="priors")
    assert back.destination == vna.url and back.objects[-1] == {"type": "study", "id": uid, "detail": {"instances": 3}}
    assert {p.patient_id for p in back.patients.all()} == {"P1"}


def test_the_stow_vna_down_the_recall_retries_with_the_reason_and_the_client_gets_503(purged, web_vna, worker,
                                                                                       settings):
    settings.RECALL_WAIT_SECONDS = 0
    web_vna.stop()
    uid = purged["study"].study_instance_uid
    url = f"{purged['url']}/studies/{uid}/metadata"

    assert _get(url).status_code == 503
    wait_for(lambda: _recall(uid) is not None and _recall(uid).status == pr.RETRYING and _recall(uid).reason, 60,
             message="recall retrying", detail=lambda: worker.log()[-3000:])
    assert _recall(uid).reason == f"WADO-RS to {purged['vna'].url}: ConnectionError"
    again = _get(url)
    assert again.status_code == 503, again.text  # not a false 200, not a 500
    assert int(again.headers["Retry-After"]) >= 1
    assert "failed: WADO-RS to" in again.json()["error"]
    assert Prior.objects.filter(purpose=pr.RECALL, study_instance_uid=uid).count() == 1  # one open recall
    assert Study.objects.get(pk=purged["study"].pk).purged_at is not None


def test_a_stow_vna_that_lost_the_study_fails_the_recall_with_the_reason(purged, web_vna, worker, settings):
    """The VNA answers 404 (it no longer holds the study): the recall fails at once, the study
    stays purged, and the client is told why."""
    settings.RECALL_WAIT_SECONDS = 0
    uid = purged["study"].study_instance_uid
    (oid,) = [s["ID"] for s in web_vna.studies(uid)]
    assert requests.delete(f"{web_vna.url}/studies/{oid}", timeout=30).status_code == 200

    assert _get(f"{purged['url']}/studies/{uid}/metadata").status_code == 503
    wait_for(lambda: _recall(uid) is not None and _recall(uid).status == pr.FAILED, 60, message="recall failed",
             detail=lambda: worker.log()[-3000:])
    fetch = _recall(uid)
    assert fetch.attempts == 1 and fetch.reason == f"permanent: WADO-RS: {purged['vna'].url} does not hold the study " \
                                                   "(HTTP 404)"
    assert recall.state(uid).state == recall.UNAVAILABLE and "does not hold the study" in recall.state(uid).reason
    assert Study.objects.get(pk=purged["study"].pk).purged_at is not None


def _archived_file(vna: OrthancProcess, sop_instance_uid: str) -> bytes:
    found = requests.post(f"{vna.url}/tools/lookup", data=sop_instance_uid, timeout=30).json()
    oid = next(f["ID"] for f in found if f["Type"] == "Instance")
    return requests.get(f"{vna.url}/instances/{oid}/file", timeout=30).content
