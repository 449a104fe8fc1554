"""The C-STORE handler reads the header from the data set's first bytes kept in memory by the
acceptor, and from the file when they do not hold the whole header: same attributes either way."""

from __future__ import annotations

from pydicom import dcmread
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from pacs.dimse.store import _header_from_head, read_attributes
from tests.support.orthanc import make_instance


def _file_and_data_set(tmp_path, syntax, **kwargs):
    ds = make_instance(study_instance_uid=generate_uid(), accession_number="HEAD1", patient_name="MÜLLER^ANNA",
                       rows=64, columns=64, **kwargs)
    ds.file_meta.TransferSyntaxUID = syntax
    path = tmp_path / "i.dcm"
    dcmwrite(path, ds, enforce_file_format=True, little_endian=syntax != ExplicitVRBigEndian,
             implicit_vr=syntax == ImplicitVRLittleEndian)
    raw = path.read_bytes()
    offset = 132 + 12 + int.from_bytes(raw[140:144], "little")
    return path, raw[offset:]


def test_header_from_memory_equals_header_from_file(tmp_path):
    for syntax in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian):
        path, data_set = _file_and_data_set(tmp_path, syntax)
        assert _header_from_head(data_set[:65536], syntax) is not None, syntax
        from_memory = read_attributes(path, transfer_syntax_uid=syntax, calling_ae_title="CT1", head=data_set[:65536])
        from_file = read_attributes(path, transfer_syntax_uid=syntax, calling_ae_title="CT1")
        assert from_memory == from_file
        assert from_memory.accession_number == "HEAD1" and from_memory.patient_name == "MÜLLER^ANNA"
        assert from_memory.sop_instance_uid == str(dcmread(path).SOPInstanceUID)


def test_head_cut_before_pixel_data_falls_back_to_the_file(tmp_path):
    path, data_set = _file_and_data_set(tmp_path, ExplicitVRLittleEndian)
    cut = data_set[:200]  # in the middle of the header
    assert _header_from_head(cut, ExplicitVRLittleEndian) is None
    attrs = read_attributes(path, transfer_syntax_uid=ExplicitVRLittleEndian, calling_ae_title="CT1", head=cut)
    assert attrs.accession_number == "HEAD1"


def test_stale_incoming_files_are_swept_fresh_ones_kept(tmp_path, settings):
    import os
    import time

    from pacs import storage

    settings.STORAGE_DIR = tmp_path / "store"
    incoming = storage.incoming_dir()
    old, fresh = incoming / "old.recv", incoming / "fresh.recv"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    assert storage.sweep_incoming(3600) == 1
    assert not old.exists() and fresh.exists()
