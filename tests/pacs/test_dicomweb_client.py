"""DICOMweb of the engine with a real client (the ``dicomweb-client`` package) over HTTP,
against studies received by the engine's Storage SCP: QIDO-RS, WADO-RS (study, series,
instance, metadata, frames, bulk data, rendered), WADO-URI, and who is let in."""

from __future__ import annotations

import datetime as dt
import io

import pytest
import requests
import time_machine
from dicomweb_client.api import DICOMwebClient
from django.utils import timezone
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

from audit.models import AuditRecord
from project import links
from tests import factories
from tests.support.dicom import port, pynetdicom_store
from tests.support.orthanc import make_instance
from worklist.models import ApiToken

pytestmark = pytest.mark.socket

@pytest.fixture
def stored(dicomweb_studies):
    return dicomweb_studies


@pytest.fixture
def connect(stored):
    """DICOMweb clients whose HTTP sessions are closed after the test (a kept-alive connection
    would keep the live server's request thread, and its database connection, open)."""
    sessions = []

    def make(url: str, authorization: str = "") -> DICOMwebClient:
        sessions.append(requests.Session())
        return DICOMwebClient(url=url, session=sessions[-1],
                              headers={"Authorization": authorization or f"Token {stored['key']}"})

    yield make
    for session in sessions:
        session.close()


def test_qido_and_wado_rs_round_trip(stored, connect):
    client = connect(stored["url"])
    studies = client.search_for_studies(search_filters={"PatientID": "DWC*"})
    assert {s["0020000D"]["Value"][0] for s in studies} == {stored["study"], stored["other"]}
    [series] = client.search_for_series(stored["study"])
    assert series["0020000E"]["Value"][0] == stored["series"]
    assert series["00201209"]["Value"] == [3]  # NumberOfSeriesRelatedInstances
    instances = client.search_for_instances(stored["study"], stored["series"])
    assert len(instances) == 3
    assert client.search_for_studies(search_filters={"PatientID": "NOBODY"}) == []

    retrieved = client.retrieve_study(stored["study"])
    sent = {d.SOPInstanceUID: d for d in stored["datasets"][:3]}
    assert {d.SOPInstanceUID for d in retrieved} == set(sent)
    for ds in retrieved:
        assert ds.PixelData == sent[ds.SOPInstanceUID].PixelData
        assert ds.PatientID == "DWC001"
    assert len(client.retrieve_series(stored["study"], stored["series"])) == 3
    one = stored["datasets"][1]
    instance = client.retrieve_instance(stored["study"], stored["series"], one.SOPInstanceUID)
    assert instance.SOPInstanceUID == one.SOPInstanceUID and instance.PixelData == one.PixelData


def test_a_study_is_answered_with_its_length_not_in_chunks(stored):
    """The whole body's Content-Length is announced (RFC 9112 6.3), so that neither end pays
    for chunked transfer coding, and it is the body's length."""
    response = requests.get(f"{stored['url']}/studies/{stored['study']}", timeout=30, headers={
        "Accept": 'multipart/related; type="application/dicom"', "Authorization": f"Token {stored['key']}"})
    assert response.status_code == 200
    assert "Transfer-Encoding" not in response.headers
    assert int(response.headers["Content-Length"]) == len(response.content)
    mark = response.headers["Content-Type"].split("boundary=")[1]
    assert response.content.count(f"--{mark}\r\n".encode()) == 3


def test_metadata_frames_bulkdata_rendered(stored, connect):
    client = connect(stored["url"])
    one = stored["datasets"][0]
    metadata = client.retrieve_study_metadata(stored["study"])
    assert len(metadata) == 3
    item = client.retrieve_instance_metadata(stored["study"], stored["series"], one.SOPInstanceUID)
    assert item["00080018"]["Value"] == [one.SOPInstanceUID]
    assert item["00280010"]["Value"] == [32]
    uri = item["7FE00010"]["BulkDataURI"]
    assert uri.endswith(f"/instances/{one.SOPInstanceUID}/bulkdata/7FE00010")
    [bulk] = client.retrieve_bulkdata(uri)
    assert bulk == one.PixelData

    [frame] = client.retrieve_instance_frames(stored["study"], stored["series"], one.SOPInstanceUID, [1])
    assert frame == one.PixelData

    jpeg = client.retrieve_instance_rendered(stored["study"], stored["series"], one.SOPInstanceUID,
                                             media_types=("image/jpeg",))
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and image.size == (24, 32)
    png = client.retrieve_instance_frames_rendered(stored["study"], stored["series"], one.SOPInstanceUID, [1],
                                                   media_types=("image/png",), params={"viewport": "12,16"})
    thumbnail = Image.open(io.BytesIO(png))
    assert thumbnail.format == "PNG" and thumbnail.size == (12, 16)


def test_wado_uri(stored):
    one = stored["datasets"][2]
    params = {"requestType": "WADO", "studyUID": stored["study"], "seriesUID": stored["series"],
              "objectUID": one.SOPInstanceUID}
    headers = {"Authorization": f"Token {stored['key']}"}
    dicom = requests.get(f"{stored['url']}/wado", params={**params, "contentType": "application/dicom"},
                         headers=headers, timeout=30)
    assert dicom.status_code == 200 and dicom.headers["Content-Type"] == "application/dicom"
    assert dcmread(io.BytesIO(dicom.content)).PixelData == one.PixelData
    jpeg = requests.get(f"{stored['url']}/wado", params=params, headers=headers, timeout=30)
    assert jpeg.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).format == "JPEG"
    png = requests.get(f"{stored['url']}/wado", params={**params, "contentType": "image/gif,image/png"},
                       headers=headers, timeout=30)
    assert png.headers["Content-Type"] == "image/png"
    assert requests.get(f"{stored['url']}/wado", params={**params, "contentType": "image/gif"}, headers=headers,
                        timeout=30).status_code == 406
    assert requests.get(f"{stored['url']}/wado", params={**params, "requestType": "X"}, headers=headers,
                        timeout=30).status_code == 400
    assert requests.get(f"{stored['url']}/wado", params=params, timeout=30).status_code == 401


def test_retrieve_is_audited_and_refused_without_a_credential(stored):
    url = f"{stored['url']}/studies/{stored['study']}"
    assert requests.get(url, timeout=30).status_code == 401
    assert requests.get(url, headers={"Authorization": "Token wrong"}, timeout=30).status_code == 401
    ApiToken.objects.update(revoked_at="2026-01-01T00:00Z")
    assert requests.get(url, headers={"Authorization": f"Token {stored['key']}"}, timeout=30).status_code == 401
    ApiToken.objects.update(revoked_at=None)
    factories.user("clerk")
    clerk = ApiToken.objects.create(user=factories.user("nobody"), name="x", key_sha256=ApiToken.digest("k2" * 10))
    assert requests.get(url, headers={"Authorization": f"Token {'k2' * 10}"}, timeout=30).status_code == 403
    assert clerk.pk
    response = requests.get(f"{url}/metadata", headers={"Authorization": f"Token {stored['key']}"}, timeout=30)
    assert response.status_code == 200
    record = AuditRecord.records.filter(event_id="110103").latest("id")
    assert record.actor == "viewer"
    assert record.detail["resource"] == "metadata" and record.detail["via"] == "token"
    assert list(record.patients.values_list("patient_id", flat=True)) == ["DWC001"]


def test_signed_link_grants_its_study_only(stored, connect, settings):
    token = links.sign_study_link(stored["study"])
    client = connect(stored["url"], f"Bearer {token}")
    assert len(client.retrieve_study(stored["study"])) == 3
    assert [s["0020000D"]["Value"][0] for s in client.search_for_studies()] == [stored["study"]]
    other = requests.get(f"{stored['url']}/studies/{stored['other']}", params={"access_token": token}, timeout=30)
    assert other.status_code == 403
    link = links.signed_study_link(stored["url"], stored["study"])
    assert requests.get(f"{link.split('?')[0]}/metadata?{link.split('?')[1]}", timeout=30).status_code == 200
    record = AuditRecord.records.filter(event_id="110103").latest("id")
    assert record.actor == "study-link" and record.detail["via"] == "link"
    assert record.detail["link_signed_at"] > 0
    settings.DICOMWEB_LINK_MAX_AGE_MINUTES = 1
    with time_machine.travel(timezone.now() - dt.timedelta(minutes=2), tick=False):
        old = links.sign_study_link(stored["study"])
    expired = requests.get(f"{stored['url']}/studies/{stored['study']}/metadata", params={"access_token": old},
                           timeout=30)
    assert expired.status_code == 401 and "expired" in expired.json()["error"]


def _multiframe(study_uid: str, *, jpeg: bool) -> tuple:
    """A 3-frame 8-bit Multi-frame Grayscale Byte Secondary Capture image: native, or each frame
    a JPEG Baseline (made by Pillow) encapsulated; with its frames as sent."""
    ds = make_instance(study_instance_uid=study_uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.7.2", modality="OT",
                       rows=8, columns=8, bits=8, patient_id="DWC003")
    frames = [bytes([(f * 80 + i) % 256 for i in range(64)]) for f in range(3)]
    ds.NumberOfFrames = 3
    if jpeg:
        encoded = []
        for frame in frames:
            out = io.BytesIO()
            Image.frombytes("L", (8, 8), frame).save(out, format="JPEG", quality=95)
            encoded.append(out.getvalue())
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
        return ds, encoded
    ds.PixelData = b"".join(frames)
    return ds, frames


def test_frames_of_multiframe_images_native_and_jpeg(stored, engine, connect):
    study = generate_uid()
    native, native_frames = _multiframe(study, jpeg=False)
    jpeg, jpeg_frames = _multiframe(study, jpeg=True)
    assert pynetdicom_store(port(engine), [native, jpeg]) == [0, 0]
    client = connect(stored["url"])
    got = client.retrieve_instance_frames(study, native.SeriesInstanceUID, native.SOPInstanceUID, [3, 1])
    assert got == [native_frames[2], native_frames[0]]
    got = client.retrieve_instance_frames(study, jpeg.SeriesInstanceUID, jpeg.SOPInstanceUID, [2],
                                          media_types=(("image/jpeg", "1.2.840.10008.1.2.4.50"),))
    assert got == [jpeg_frames[1]]
    rendered = client.retrieve_instance_frames_rendered(study, jpeg.SeriesInstanceUID, jpeg.SOPInstanceUID, [3],
                                                        media_types=("image/png",))
    assert Image.open(io.BytesIO(rendered)).size == (8, 8)
    refused = requests.get(f"{stored['url']}/studies/{study}/series/{native.SeriesInstanceUID}/instances/"
                           f"{native.SOPInstanceUID}/frames/4", headers={"Authorization": f"Token {stored['key']}"},
                           timeout=30)
    assert refused.status_code == 404
