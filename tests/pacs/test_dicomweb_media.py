"""DICOMweb media types: the Accept header read, DICOM JSON written (PS3.18 F.2), multipart
bodies (RFC 2387) and the index attribute names (keywords and tags)."""

from __future__ import annotations

import datetime as dt
from email import message_from_bytes

import pytest

from pacs import storage
from pacs.dicomweb import files, media
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


def test_multipart_length_is_the_length_of_the_body():
    mark = media.boundary()
    parts = [("application/dicom; transfer-syntax=1.2.840.10008.1.2.1", [b"x" * 1000, b"y" * 7]),
             ("application/dicom; transfer-syntax=1.2.840.10008.1.2", [b""])]
    body = b"".join(media.multipart(parts, mark))
    assert media.multipart_length([(t, sum(map(len, chunks))) for t, chunks in parts], mark) == len(body)
    assert media.multipart_length([], mark) == len(b"".join(media.multipart([], mark)))


def test_a_file_is_sent_at_the_size_announced_or_the_answer_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "CHUNK", 4)
    path = tmp_path / "1.dcm"
    path.write_bytes(b"0123456789")
    assert list(files.sized_chunks(path, 10)) == [b"0123", b"4567", b"89"]
    # replaced by a copy of another size after the Content-Length was reckoned
    with pytest.raises(files.ChangedWhileSent):
        list(files.sized_chunks(path, 9))
    with pytest.raises(files.ChangedWhileSent):
        list(files.sized_chunks(path, 11))


def test_instance_path_takes_uid_paths_as_they_are_and_checks_any_other(tmp_path, settings):
    settings.STORAGE_DIR = str(tmp_path / "store")
    relative = storage.relative_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert storage.instance_path(relative) == tmp_path / "store" / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    for leaving in ("1.2.3/../../../etc/passwd.dcm", "/etc/1.2/3.dcm", "../1.2/1.2.3/1.2.3.4.dcm"):
        with pytest.raises(storage.InvalidUID):
            storage.instance_path(leaving)


def test_keywords_and_tags():
    assert iq.keyword_of("0020000D") == "StudyInstanceUID"
    assert iq.keyword_of("PatientID") == "PatientID"
    assert iq.attribute("00100020").field == "patient_id"
    assert iq.attribute("ReferringPhysicianName") is None
    for bad in ("NotAKeyword", "ZZZZ0010", "00091010"):
        with pytest.raises(iq.QueryError):
            iq.keyword_of(bad)
