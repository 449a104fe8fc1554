"""Fixtures of the imaging tests shared by more than one module."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid

from project.access import RADIOLOGIST
from tests import factories
from tests.support.dicom import port, pynetdicom_store
from tests.support.orthanc import OrthancProcess, make_instance

DICOMWEB_KEY = "dicomweb-test-token-0123456789"


@pytest.fixture
def dicomweb_studies(engine, live_server, settings):
    """The engine's AE and web server; two studies received by C-STORE (one of 3 single-frame
    images of patient DWC001, one of 1 MR image of DWC002), and a radiologist's API token
    (``key``) for DICOMweb at ``url``."""
    from worklist.models import ApiToken

    settings.DICOM_UNKNOWN_AE_FROM = ["127.0.0.1"]
    # dicomweb-client sends Host without the port: the URLs answered use the public base URL.
    settings.DICOMWEB_BASE_URL = f"{live_server.url}/dicomweb"
    first, second = generate_uid(), generate_uid()
    series = generate_uid()
    datasets = [make_instance(study_instance_uid=first, series_instance_uid=series, instance_number=n,
                              patient_id="DWC001", accession_number="ACCDW1", rows=32, columns=24)
                for n in range(1, 4)]
    datasets.append(make_instance(study_instance_uid=second, patient_id="DWC002", modality="MR"))
    assert pynetdicom_store(port(engine), datasets) == [0] * 4
    user = factories.user("viewer", RADIOLOGIST)
    ApiToken.objects.create(user=user, name="viewer", key_sha256=ApiToken.digest(DICOMWEB_KEY))
    return {"study": first, "series": series, "other": second, "datasets": datasets, "key": DICOMWEB_KEY,
            "url": f"{live_server.url}/dicomweb"}


@pytest.fixture
def web_vna(tmp_path):
    """Orthanc with the DICOMweb plug-in: a VNA reached by STOW-RS, QIDO-RS and WADO-RS at
    ``{url}/dicom-web`` (and by C-STORE at its DICOM port, to put studies into it)."""
    vna = OrthancProcess(tmp_path / "web-vna", dicomweb=True).start()
    try:
        yield vna
    finally:
        vna.stop()
