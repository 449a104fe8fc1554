"""DICOMweb media types: the Accept header read, DICOM JSON written (PS3.18 F.2), multipart
bodies (RFC 2387) and the index attribute names (keywords and tags)."""

from __future__ import annotations

import datetime as dt
from email import message_from_bytes

import pytest

from pacs.dicomweb import media
from pacs.services import index_query as iq


def test_accept_header_with_quoted_parameters_and_q_zero():
    ranges = media.accepted('multipart/related; type="application/dicom"; transfer-syntax=*, '
                            'application/dicom+json;q=0.5, image/png;q=0')
    assert [(r.type, r.part_type, r.transfer_syntax) for r in ranges] == [
        ("multipart/related", "application/dicom", "*"), ("application/dicom+json", "", "")]
    assert [r.type for r in media.accepted("")] == ["*/*"]


def test_dicom_json_values_by_vr():
    doc = media.dataset_json({"PatientName": "TESTPERSON^ANNA", "StudyDate": dt.date(2026, 3, 10),
                              "ModalitiesInStudy": "CT\\SR", "NumberOfStudyRelatedInstances": 7,
                              "AccessionNumber": ""})
    assert list(doc) == ["00080020", "00080050", "00080061", "00100010", "00201208"]
    assert doc["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "TESTPERSON^ANNA"}]}
    assert doc["00080020"] == {"vr": "DA", "Value": ["20260310"]}
    assert doc["00080061"] == {"vr": "CS", "Value": ["CT", "SR"]}
    assert doc["00201208"] == {"vr": "IS", "Value": [7]}
    assert doc["00080050"] == {"vr": "SH"}  # empty: no Value


def test_multipart_body_parses_as_mime():
    mark = media.boundary()
    body = b"".join(media.multipart([("application/dicom", [b"first", b"-part"]), ("application/dicom", [b"2"])],
                                    mark))
    message = message_from_bytes(f"Content-Type: {media.multipart_type('application/dicom', mark)}\r\n\r\n".encode()
                                 + body)
    assert [part.get_payload(decode=True) for part in message.get_payload()] == [b"first-part", b"2"]
    assert b"".join(media.json_array([{"a": 1}, {"b": 2}])) == b'[{"a":1},{"b":2}]'


def test_keywords_and_tags():
    assert iq.keyword_of("0020000D") == "StudyInstanceUID"
    assert iq.keyword_of("PatientID") == "PatientID"
    assert iq.attribute("00100020").field == "patient_id"
    assert iq.attribute("ReferringPhysicianName") is None
    for bad in ("NotAKeyword", "ZZZZ0010", "00091010"):
        with pytest.raises(iq.QueryError):
            iq.keyword_of(bad)
