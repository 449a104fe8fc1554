"""Orthanc's DICOMweb plug-in as a client of the engine: the engine declared as a remote
DICOMweb server (with an API token in its HTTP headers), a QIDO-RS search, a WADO-RS metadata
read and a retrieve of a whole study into Orthanc through it."""

from __future__ import annotations

import pytest
import requests

from tests.support.orthanc import OrthancProcess

pytestmark = pytest.mark.socket


@pytest.fixture
def orthanc_client(dicomweb_studies, tmp_path):
    server = {"Url": f"{dicomweb_studies['url']}/",
              "HttpHeaders": {"Authorization": f"Token {dicomweb_studies['key']}"}}
    peer = OrthancProcess(tmp_path / "orthanc-client", dicomweb=True,
                          extra={"DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": {"engine": server}}})
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


def test_orthanc_searches_and_retrieves_a_study_from_the_engine(dicomweb_studies, orthanc_client):
    base = f"{orthanc_client.url}/dicom-web/servers/engine"
    found = requests.post(f"{base}/qido", json={"Uri": "/studies", "Arguments": {"PatientID": "DWC001"}}, timeout=60)
    assert found.status_code == 200, found.text
    # Orthanc answers in its own JSON form: {"0020000D": {"Name": ..., "Type": "String", "Value": uid}}
    assert [s["0020000D"]["Value"] for s in found.json()] == [dicomweb_studies["study"]]

    series = requests.post(f"{base}/qido", json={"Uri": f"/studies/{dicomweb_studies['study']}/series"}, timeout=60)
    assert [s["0020000E"]["Value"] for s in series.json()] == [dicomweb_studies["series"]]

    metadata = requests.post(f"{base}/get", json={"Uri": f"/studies/{dicomweb_studies['study']}/metadata"},
                             timeout=60)
    assert metadata.status_code == 200
    assert len(metadata.json()) == 3

    retrieved = requests.post(f"{base}/retrieve", json={"Resources": [{"Study": dicomweb_studies["study"]}]},
                              timeout=120)
    assert retrieved.status_code == 200, retrieved.text
    assert orthanc_client.count_instances() == 3
    sent = {d.SOPInstanceUID for d in dicomweb_studies["datasets"][:3]}
    assert set(orthanc_client.sop_instance_uids()) == sent
    assert orthanc_client.instance_tags(sorted(sent)[0])["PatientID"] == "DWC001"


def test_orthanc_without_the_token_is_refused(dicomweb_studies, tmp_path):
    peer = OrthancProcess(tmp_path / "orthanc-anonymous", dicomweb=True, extra={"DicomWeb": {
        "Enable": True, "Root": "/dicom-web/", "Servers": {"engine": {"Url": f"{dicomweb_studies['url']}/"}}}})
    peer.start()
    try:
        answer = requests.post(f"{peer.url}/dicom-web/servers/engine/qido", json={"Uri": "/studies"}, timeout=60)
        assert answer.status_code != 200
        retrieved = requests.post(f"{peer.url}/dicom-web/servers/engine/retrieve",
                                  json={"Resources": [{"Study": dicomweb_studies["study"]}]}, timeout=60)
        assert retrieved.status_code != 200 or peer.count_instances() == 0
        assert peer.count_instances() == 0
    finally:
        peer.stop()
