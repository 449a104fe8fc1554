"""The built-in viewer (OHIF from its npm package, served under /viewer/) in Chromium: opened from
a study of the reading worklist, it loads the study and the patient's prior study through the
engine's DICOMweb (QIDO-RS, WADO-RS metadata and frames), the accesses on the audit trail, and it
runs under its own Content-Security-Policy without a violation."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from pydicom.uid import generate_uid

from audit.models import AuditRecord
from pacs.models import Prior
from project.access import RADIOLOGIST
from project.csp import VIEWER_POLICY
from tests.factories import reading as f
from tests.support.browser import login
from tests.support.dicom import port, pynetdicom_store
from tests.support.orthanc import make_instance
from worklist.models import ReadingItem

pytestmark = [pytest.mark.django_db(transaction=True)]

WATCH = """window.__csp = [];
document.addEventListener('securitypolicyviolation',
  e => window.__csp.push(e.violatedDirective + ' ' + (e.blockedURI || 'inline')));"""


def _series(study_uid: str, patient_id: str, description: str, *, images: int, number: int, study_date: dt.date):
    series_uid = generate_uid()
    datasets = []
    for n in range(1, images + 1):
        ds = make_instance(study_instance_uid=study_uid, series_instance_uid=series_uid, patient_id=patient_id,
                           study_date=study_date, instance_number=n, rows=64, columns=64)
        ds.SeriesDescription = description
        ds.SeriesNumber = number
        datasets.append(ds)
    return series_uid, datasets


def test_study_opens_in_the_builtin_viewer_through_dicomweb(builtin_viewer, engine, live_server, new_page, settings):
    settings.DICOM_UNKNOWN_AE_FROM = ["127.0.0.1"]
    settings.VIEWER_URL_TEMPLATE = ""
    rp = f.study(priority="STAT", patient_name="VIEWER^CASE")
    patient_id = ReadingItem.objects.get(requested_procedure=rp).patient_id
    study_uid, prior_uid = rp.study_instance_uid, generate_uid()
    today = dt.date.today()
    axial_uid, axial = _series(study_uid, patient_id, "AXIAL VIEWER TEST", images=3, number=1, study_date=today)
    _, scout = _series(study_uid, patient_id, "SCOUT VIEWER TEST", images=1, number=2, study_date=today)
    _, prior = _series(prior_uid, patient_id, "PRIOR VIEWER TEST", images=1, number=1,
                       study_date=today - dt.timedelta(days=400))
    assert pynetdicom_store(port(engine), axial + scout + prior) == [0] * 5
    # The prior as the priors service leaves it once chosen for this order and held (READY).
    Prior.objects.create(requested_procedure=rp, study_instance_uid=prior_uid, patient_id=patient_id,
                         study_date=today - dt.timedelta(days=400), status="READY")
    f.user("rad_view", RADIOLOGIST)

    page = new_page()
    login(page, live_server, "rad_view")
    page.click(f"#reading-rows tr[data-accession='{rp.accession_number}'] a")
    link = page.locator("#viewer-link")
    href = link.get_attribute("href")
    assert href.startswith("/viewer/viewer?StudyInstanceUIDs=")
    # The study first, then its prior; the viewport opens on the study's first series.
    assert f"StudyInstanceUIDs={study_uid},{prior_uid}&" in href
    assert href.endswith(f"initialSeriesInstanceUID={axial_uid}")
    with page.context.expect_page() as opened:
        link.click()
    viewer = opened.value
    # Watched from its first request on: the tab is loaded again with the listeners in place.
    requests: list[str] = []
    viewer.on("request", lambda r: requests.append(r.url))
    viewer.add_init_script(WATCH)
    response = viewer.reload()
    assert response.headers["content-security-policy"] == VIEWER_POLICY
    # OHIF's study browser lists the series of the study, by their Series Description.
    viewer.get_by_text("AXIAL VIEWER TEST").first.wait_for(timeout=60_000)
    viewer.get_by_text("SCOUT VIEWER TEST").first.wait_for()
    viewer.get_by_text("PRIOR VIEWER TEST").first.wait_for()  # the prior beside it, in the study browser
    # ... and the image of the first series reaches a viewport through WADO-RS frames.
    frames = re.compile(rf"/dicomweb/studies/{re.escape(study_uid)}/series/{re.escape(axial_uid)}/instances/"
                        r"[0-9.]+/frames/1")
    viewer.wait_for_function("() => document.querySelector('.cornerstone-canvas, canvas') !== null", timeout=60_000)
    _wait(viewer, lambda: any(frames.search(u) for u in requests), "a WADO-RS frame request")
    # The viewport's overlay names the study's first series (its thumbnail and the overlay), not the prior's.
    _wait(viewer, lambda: viewer.get_by_text("AXIAL VIEWER TEST").count() == 2, "overlay of the study's first series")
    assert viewer.get_by_text("PRIOR VIEWER TEST").count() == 1

    assert any(f"/dicomweb/studies/{study_uid}/series" in u for u in requests)  # QIDO-RS series of the study
    assert any(f"/dicomweb/studies/{prior_uid}/series" in u for u in requests)  # and of the prior
    # The engine saw and audited the reads as the signed-in radiologist (session).
    reads = AuditRecord.records.filter(event_id="110103", actor="rad_view")
    resources = set(reads.values_list("detail__resource", flat=True))
    assert {"metadata", "frames"} <= resources, resources
    assert set(reads.values_list("detail__via", flat=True)) == {"session"}
    assert set(reads.values_list("patients__patient_id", flat=True)) == {patient_id}
    assert viewer.evaluate("window.__csp || []") == []


def _wait(page, condition, what: str, seconds: float = 60.0) -> None:
    for _ in range(int(seconds * 4)):
        if condition():
            return
        page.wait_for_timeout(250)
    pytest.fail(f"the viewer showed no {what}")
