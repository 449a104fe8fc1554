"""C-STORE SCP: dcmtk's storescu as the modality, the real AE on an ephemeral port (PS3.4 Annex B).

Persist before Success (file fsynced and renamed, index committed), idempotent resends,
UIDs that would escape the store refused (PS3.5 9.1), disk full and database down answered
with 0xA700 (PS3.4 B.2.3).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from django.db import connections
from pydicom import dcmread

from pacs import storage
from pacs.models import Instance, Series, StoreConflict, Study
from tests.support.dicom import new_uid, port, pynetdicom_store
from tests.support.orthanc import make_instance, storescu, write_study

pytestmark = [pytest.mark.socket, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True, params=["postgresql", "portable"])
def index_path(request, monkeypatch):
    """Every store test runs on both index writers: PostgreSQL's statements and the ORM's."""
    monkeypatch.setattr("pacs.services.images.FAST_INDEX", request.param == "postgresql")
    return request.param


def test_storescu_study_is_stored_indexed_and_resend_is_idempotent(engine, store_dir, tmp_path):
    study_uid = new_uid()
    paths = write_study(tmp_path / "in", 5, study_instance_uid=study_uid, accession_number="ACC-S1")
    proc = storescu(port(engine), paths)
    assert proc.returncode == 0, proc.stderr

    study = Study.objects.get(study_instance_uid=study_uid)
    assert study.accession_number == "ACC-S1" and study.patient_id == "PAT001"
    assert study.modalities_in_study == "CT" and study.calling_ae_title == "MODALITY"
    assert Series.objects.filter(study=study).count() == 1
    instances = list(Instance.objects.filter(study=study))
    assert len(instances) == 5
    for instance in instances:
        stored = store_dir / instance.path
        assert instance.path.startswith(f"{study_uid}/") and stored.is_file()
        raw = stored.read_bytes()
        assert raw[:128] == b"\x00" * 128 and raw[128:132] == b"DICM"
        assert instance.size == len(raw)
        assert dcmread(stored).SOPInstanceUID == instance.sop_instance_uid
    assert not list((store_dir / ".incoming").iterdir())

    # A resend of the same SOP Instance UIDs: Success again, no new rows.
    proc = storescu(port(engine), paths)
    assert proc.returncode == 0, proc.stderr
    assert Instance.objects.filter(study=study).count() == 5
    assert Study.objects.count() == 1


def test_pixel_data_and_transfer_syntax_kept(engine, store_dir, tmp_path):
    study_uid = new_uid()
    (path,) = write_study(tmp_path / "in", 1, study_instance_uid=study_uid, rows=64, columns=64)
    original = dcmread(path)
    proc = storescu(port(engine), [path], extra=("-xe",))  # propose explicit VR little endian only
    assert proc.returncode == 0, proc.stderr
    instance = Instance.objects.get(sop_instance_uid=original.SOPInstanceUID)
    assert instance.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert dcmread(store_dir / instance.path).PixelData == original.PixelData


@pytest.mark.parametrize(
    "field,value",
    [
        ("StudyInstanceUID", "../../../../tmp/evil"),
        ("SeriesInstanceUID", "1.2/../../x"),
        ("StudyInstanceUID", "1.2." + "3" * 70),
        ("SOPInstanceUID", "1.2/../../../x"),
    ],
)
def test_path_traversal_uids_are_refused(engine, store_dir, field, value):
    ds = make_instance(study_instance_uid=new_uid())
    setattr(ds, field, value)
    if field == "SOPInstanceUID":
        ds.file_meta.MediaStorageSOPInstanceUID = value
    statuses = pynetdicom_store(port(engine), [ds])
    assert statuses[0] & 0xF000 in (0xC000, 0xA000) and statuses[0] != 0x0000
    assert Instance.objects.count() == 0
    files = [p for p in store_dir.rglob("*") if p.is_file()]
    assert files == []
    assert not Path("/tmp/evil").exists()


def test_a_nul_in_a_text_value_is_stored_and_indexed_with_a_replacement_character(engine, store_dir):
    """NUL is in no character repertoire (PS3.5 6.1) and PostgreSQL's text cannot hold it: the
    image is not refused (a modality would retry it forever, or drop it); the file keeps the bytes
    as sent, the index U+FFFD in their place; a UID holding one is refused as invalid."""
    ds = make_instance(study_instance_uid=new_uid(), patient_name="DOE\x00^JANE", accession_number="AC\x00C1",
                       patient_id="P\x001")
    assert pynetdicom_store(port(engine), [ds]) == [0x0000]
    instance = Instance.objects.select_related("study").get()
    assert (instance.study.patient_name, instance.study.accession_number) == ("DOE\ufffd^JANE", "AC\ufffdC1")
    assert dcmread(store_dir / instance.path).PatientName == "DOE\x00^JANE"
    bad_uid = make_instance(study_instance_uid="1.2\x00.3")
    assert pynetdicom_store(port(engine), [bad_uid])[0] & 0xF000 in (0xC000, 0xA000)
    assert Instance.objects.count() == 1


def test_same_sop_instance_uid_in_another_study_is_kept_and_recorded(engine, settings):
    """STORE_OVERWRITE_POLICY=keep (the default): the first version stays (tests/pacs/test_store_resend.py)."""
    first = make_instance(study_instance_uid=new_uid())
    assert pynetdicom_store(port(engine), [first]) == [0x0000]
    clash = make_instance(study_instance_uid=new_uid(), sop_instance_uid=first.SOPInstanceUID)
    assert pynetdicom_store(port(engine), [clash]) == [0x0000]
    assert Instance.objects.get().study.study_instance_uid == first.StudyInstanceUID
    assert Study.objects.count() == 1 and StoreConflict.objects.get().policy == "keep"


@pytest.fixture
def full_store(tmp_path, settings):
    """STORAGE_DIR on a real, tiny file system (a 256 KiB tmpfs): writes fail with ENOSPC."""
    mountpoint = tmp_path / "full"
    mountpoint.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mountpoint)], capture_output=True)
    if proc.returncode != 0:
        # No mount permission: an immutable directory (EPERM) is the next best "cannot write".
        subprocess.run(["chattr", "+i", str(mountpoint)], check=True)
        settings.STORAGE_DIR = mountpoint
        yield mountpoint
        subprocess.run(["chattr", "-i", str(mountpoint)], check=False)
        return
    (mountpoint / ".incoming").mkdir()
    with open(mountpoint / "filler", "wb") as fh:  # leave less than one instance of room
        try:
            fh.write(b"\x00" * (200 * 1024))
        except OSError:
            pass
    settings.STORAGE_DIR = mountpoint
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


def test_disk_full_is_answered_out_of_resources_and_nothing_indexed(engine, full_store, tmp_path):
    study_uid = new_uid()
    paths = write_study(tmp_path / "in", 2, study_instance_uid=study_uid, rows=256, columns=256)  # 128 KiB each
    proc = storescu(port(engine), paths)
    assert "refused: outofresources" in (proc.stdout + proc.stderr).lower(), proc.stderr
    assert "success" not in (proc.stdout + proc.stderr).lower()
    assert Instance.objects.count() == 0
    # Neither the acceptor's temporary file (``*.recv`` in .incoming) nor a file at its final
    # name is left behind.
    temporaries = list((full_store / ".incoming").glob(f"*{storage.RECEIVED_SUFFIX}"))
    leftovers = [p for p in full_store.rglob("*") if p.is_file() and p.name != "filler"]
    assert temporaries == [] and leftovers == [], leftovers


def test_database_down_is_answered_out_of_resources_then_resend_succeeds(engine, store_dir, tmp_path):
    """The database goes away while an association is open: 0xA700 for every C-STORE, nothing
    left on disk; the SCU's resend after recovery succeeds.  (Down before the association,
    the association itself is refused by the node policy.)"""
    from pynetdicom import AE

    study_uid = new_uid()
    paths = write_study(tmp_path / "in", 2, study_instance_uid=study_uid)
    datasets = [dcmread(p) for p in paths]
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port(engine), ae_title="PACS")
    assert assoc.is_established
    db = connections.settings["default"]
    real_port = db.get("PORT")
    with connections["default"].cursor() as cursor:  # cut the association thread's session
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    db["PORT"] = "1"  # and a reconnection finds no database
    try:
        statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        db["PORT"] = real_port
        assoc.release()
    assert statuses == [0xA700, 0xA700]
    assert Instance.objects.count() == 0
    assert [p for p in store_dir.rglob("*.dcm")] == []  # the renamed file was removed again

    proc = storescu(port(engine), paths)  # the SCU retries after recovery
    assert proc.returncode == 0, proc.stderr
    assert Instance.objects.count() == 2


def test_large_instance_is_streamed_to_disk(engine, store_dir, tmp_path):
    """A 64 MB multi-frame-sized instance: stored through the chunked path, checksum intact."""
    import hashlib

    ds = make_instance(study_instance_uid=new_uid(), rows=4096, columns=4096 * 2)  # 64 MiB of pixels
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    digest = hashlib.sha256(ds.PixelData).hexdigest()
    del ds
    proc = storescu(port(engine), [path])
    assert proc.returncode == 0, proc.stderr
    instance = Instance.objects.get()
    assert hashlib.sha256(dcmread(store_dir / instance.path).PixelData).hexdigest() == digest
    assert os.path.getsize(store_dir / instance.path) > 64 * 1024 * 1024
