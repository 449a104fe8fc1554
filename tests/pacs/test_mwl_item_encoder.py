"""MWL answers written straight from the rows (pacs.dimse.mwl.ItemEncoder) are the same data
sets as the pydicom-built ones (build_item), element for element, in both little endian
transfer syntaxes, for narrow, universal and non-ASCII answers."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import decode

from pacs.dimse.matching import TOP_KEYS
from pacs.dimse.mwl import ItemEncoder, build_item, find
from tests.pacs.mwl_data import local, make_patient, make_step

pytestmark = pytest.mark.django_db


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
    got = decode(BytesIO(raw), syntax == ImplicitVRLittleEndian, True, False)
    expected = build_item(matches, row)
    assert [e.tag for e in got] == [e.tag for e in expected]
    for elem in expected:
        if elem.VR == "SQ":
            assert len(got[elem.tag].value) == len(elem.value)
            for a, b in zip(got[elem.tag].value, elem.value, strict=True):
                assert {e.tag: _norm(e.value) for e in a} == {e.tag: _norm(e.value) for e in b}, elem.keyword
        else:
            assert _norm(got[elem.tag].value) == _norm(elem.value), elem.keyword


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


def test_non_ascii_answer_declares_utf8_and_ascii_answer_does_not(settings):
    settings.MWL_FILTER_BY_CALLING_AE = False
    make_step(make_patient("ÅSTRÖM^EVA", "P3"), accession="ENC3")
    make_step(make_patient("JONES^BOB", "P4"), accession="ENC4")
    for accession, charset in (("ENC3", "ISO_IR 192"), ("ENC4", None)):
        matches, rows = find(_console_query(accession), calling_ae_title="CT1")
        ds = decode(BytesIO(ItemEncoder.for_query(matches, ImplicitVRLittleEndian).encode(rows[0])), True, True, False)
        assert ds.get("SpecificCharacterSet") == charset
        assert str(ds.PatientName) in ("ÅSTRÖM^EVA", "JONES^BOB")


def test_big_endian_falls_back_to_pydicom():
    matches, _rows = find(_console_query("NONE"), calling_ae_title="CT1")
    assert ItemEncoder.for_query(matches, ExplicitVRBigEndian) is None
