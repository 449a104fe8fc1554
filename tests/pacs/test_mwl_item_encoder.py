"""MWL answers written straight from the rows (pacs.dimse.mwl.ItemEncoder) are the same data
sets as the pydicom-built ones (build_item), element for element, in both little endian
transfer syntaxes, for narrow, universal and non-ASCII answers; and their bytes hold the
elements in ascending tag order (PS3.5 section 7.1), read from the bytes as written: a decoded
pydicom Dataset iterates in tag order whatever order the encoder wrote."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import decode, encode

from pacs.dimse.matching import TOP_KEYS
from pacs.dimse.mwl import ItemEncoder, build_item, find
from tests.factories import local, make_patient, make_step
from tests.support.dicom_encoding import assert_ascending, written, written_tags


def _console_query(accession="") -> Dataset:
    ds = Dataset()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                    "ReferringPhysicianName", "RequestedProcedureID", "RequestedProcedureDescription",
                    "StudyInstanceUID"):
        setattr(ds, keyword, "")
    ds.AccessionNumber = accession
    sps = Dataset()
    for keyword in ("ScheduledStationAETitle", "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime",
                    "Modality", "ScheduledProcedureStepDescription", "ScheduledProcedureStepID"):
        setattr(sps, keyword, "")
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    return ds


def _everything(accession="") -> Dataset:
    """Every top-level key the engine knows, with an empty (universal) SPS sequence and charset."""
    from pydicom.datadict import dictionary_VR

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword in TOP_KEYS:
        vr = dictionary_VR(keyword)
        if vr == "SQ":
            setattr(ds, keyword, Sequence([]))
        elif vr in ("US", "SS", "UL", "SL"):
            setattr(ds, keyword, None)
        else:
            setattr(ds, keyword, "")
    ds.AccessionNumber = accession
    return ds


def _norm(value):
    """An empty value is empty whether pydicom holds it as None or ''."""
    return None if value in (None, "") else str(value)


def _same(encoder: ItemEncoder, matches, row, syntax) -> None:
    raw = encoder.encode(row)
    implicit = syntax == ImplicitVRLittleEndian
    assert_ascending(raw, implicit=implicit)
    got = decode(BytesIO(raw), implicit, True, False)
    expected = build_item(matches, row)
    wire = written(raw, implicit=implicit)
    assert [e.tag for e in wire] == [e.tag for e in expected]  # the same elements, in the order written
    on_the_wire = {e.tag: e for e in wire}
    for elem in expected:
        if elem.VR == "SQ":
            assert len(got[elem.tag].value) == len(elem.value)
            for wire_item, b in zip(on_the_wire[elem.tag].items, elem.value, strict=True):
                assert [e.tag for e in wire_item] == [e.tag for e in b], elem.keyword
            for a, b in zip(got[elem.tag].value, elem.value, strict=True):
                assert {e.tag: _norm(e.value) for e in a} == {e.tag: _norm(e.value) for e in b}, elem.keyword
        else:
            assert _norm(got[elem.tag].value) == _norm(elem.value), elem.keyword


@pytest.mark.django_db
@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
@pytest.mark.parametrize("query", ["console", "everything"])
def test_encoded_items_equal_the_pydicom_items(syntax, query, settings):
    settings.MWL_FILTER_BY_CALLING_AE = False
    make_step(make_patient("MÜLLER^JÖRG", "P1", patient_birth_date="19700101", patient_sex="M"),
              accession="ENC1", start=local(2026, 11, 26, 8, 30))
    step = make_step(make_patient("SMITH^ANN", "P2"), accession="ENC2", modality="MR", start=local(2026, 11, 26, 9, 5))
    type(step).objects.filter(pk=step.pk).update(protocol_code_value="")  # no protocol: an empty code sequence
    identifier = _console_query() if query == "console" else _everything()
    matches, rows = find(identifier, calling_ae_title="CT1")
    assert len(rows) == 2
    encoder = ItemEncoder.for_query(matches, syntax)
    assert encoder is not None
    for row in rows:
        _same(encoder, matches, row, syntax)


@pytest.mark.django_db
def test_non_ascii_answer_declares_utf8_and_ascii_answer_does_not(settings):
    settings.MWL_FILTER_BY_CALLING_AE = False
    make_step(make_patient("ÅSTRÖM^EVA", "P3"), accession="ENC3")
    make_step(make_patient("JONES^BOB", "P4"), accession="ENC4")
    for accession, charset in (("ENC3", "ISO_IR 192"), ("ENC4", None)):
        matches, rows = find(_console_query(accession), calling_ae_title="CT1")
        ds = decode(BytesIO(ItemEncoder.for_query(matches, ImplicitVRLittleEndian).encode(rows[0])), True, True, False)
        assert ds.get("SpecificCharacterSet") == charset
        assert str(ds.PatientName) in ("ÅSTRÖM^EVA", "JONES^BOB")


@pytest.mark.django_db
def test_big_endian_falls_back_to_pydicom():
    matches, _rows = find(_console_query("NONE"), calling_ae_title="CT1")
    assert ItemEncoder.for_query(matches, ExplicitVRBigEndian) is None


# ------------------------------------------------------------- the order check itself can fail
def _swap(raw: bytes, first, second) -> bytes:
    """``raw`` with the bytes of two adjacent elements exchanged (lengths unchanged)."""
    assert first.end == second.start
    return raw[:first.start] + raw[second.start:second.end] + raw[first.start:first.end] + raw[second.end:]


def _answer_like() -> Dataset:
    ds = Dataset()
    ds.AccessionNumber = "ORD1"
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "P1"
    sps = Dataset()
    sps.Modality = "CT"
    sps.ScheduledStationAETitle = "CT1"
    sps.ScheduledProcedureStepID = "SPS1"
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    return ds


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_the_order_check_fails_on_top_level_elements_out_of_order(implicit):
    raw = encode(_answer_like(), implicit, True)
    assert_ascending(raw, implicit=implicit)  # pydicom writes in tag order
    accession, name = written(raw, implicit=implicit)[:2]
    swapped = _swap(raw, accession, name)
    # pydicom decodes the swapped bytes into the same, sorted, Dataset: only the bytes tell.
    assert [e.tag for e in decode(BytesIO(swapped), implicit, True, False)] == [e.tag for e in _answer_like()]
    assert written_tags(swapped, implicit=implicit)[:2] == [0x00100010, 0x00080050]
    with pytest.raises(AssertionError, match="ascending tag order"):
        assert_ascending(swapped, implicit=implicit)


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
def test_the_order_check_fails_on_item_elements_out_of_order(implicit):
    raw = encode(_answer_like(), implicit, True)
    (sequence,) = [e for e in written(raw, implicit=implicit) if e.items]
    modality, station = sequence.items[0][:2]
    swapped = _swap(raw, modality, station)
    assert written_tags(swapped, implicit=implicit) == written_tags(raw, implicit=implicit)  # top level intact
    with pytest.raises(AssertionError, match=r"\(0040,0100\) item 1"):
        assert_ascending(swapped, implicit=implicit)
