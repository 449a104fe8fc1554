"""A C-STORE of a SOP Instance UID already stored (PS3.4 B.2.3), sent by dcmtk's storescu to the
real listener: an identical resend changes nothing; other content follows STORE_OVERWRITE_POLICY
(keep / replace / reject), is recorded and shown on the study page; on both index writers."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth.models import Group, User
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from pydicom import dcmread

from pacs import storage
from pacs.models import Instance, StoreConflict, Study, Transfer, VnaDestination
from pacs.models import images as im
from pacs.models import transfers as tr
from pacs.services.routing import archive
from project.access import TECHNOLOGIST
from tests.support.dicom import new_uid, port
from tests.support.orthanc import make_instance, storescu

pytestmark = [pytest.mark.socket, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True, params=["postgresql", "portable"])
def index_path(request, monkeypatch):
    """Every test runs on both index writers: PostgreSQL's statements and the ORM's."""
    monkeypatch.setattr("pacs.services.images.FAST_INDEX", request.param == "postgresql")
    return request.param


def store_status(proc: subprocess.CompletedProcess) -> list[str]:
    """The statuses storescu -v reports, one per file ("Success" or the failure it names)."""
    return re.findall(r"Received Store Response \(([^)]*)\)", proc.stdout + proc.stderr)


def status_codes(proc: subprocess.CompletedProcess) -> list[int]:
    """The Status (0000,0900) of each C-STORE-RSP, from storescu -d's dump of the response."""
    return [int(v, 16) for v in re.findall(r"DIMSE Status\s+: 0x([0-9A-Fa-f]{4})", proc.stdout + proc.stderr)]


def write(ds, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def versions(tmp_path, **changes):
    """An instance, and another version of it (same SOP Instance UID) with ``changes`` and other pixels."""
    study_uid, series_uid, sop_uid = new_uid(), new_uid(), new_uid()
    first = make_instance(study_instance_uid=study_uid, series_instance_uid=series_uid, sop_instance_uid=sop_uid,
                          patient_name="FIRST^PATIENT", accession_number="ACC-R1")
    changes = {"patient_name": "FIRST^PATIENT", "study_instance_uid": study_uid, "series_instance_uid": series_uid,
               **changes}
    second = make_instance(sop_instance_uid=sop_uid, accession_number="ACC-R1", instance_number=2, **changes)
    second.InstanceNumber = 1  # the same instance, but random pixels seeded otherwise
    return write(first, tmp_path / "v1.dcm"), write(second, tmp_path / "v2.dcm")


def files_in(store: Path) -> list[Path]:
    return sorted(p for p in store.rglob("*") if p.is_file() and ".incoming" not in p.parts)


def snapshot(instance: Instance) -> dict:
    """The instance and study rows, but for the digest: a resend records the stored version's
    digest when it first compares with it (checked where that is the point)."""
    row = Instance.objects.filter(pk=instance.pk).values().get()
    row.pop("dataset_sha256")
    return {**row, "study": Study.objects.filter(pk=row["study_id"]).values().get()}


def assert_no_patient_values_logged(caplog, *values):
    """No log record, message or extra field, carries a patient value."""
    assert caplog.records
    for record in caplog.records:
        text = repr(record.__dict__)
        assert not [v for v in values if v in text], record.__dict__


def login(client, name, *roles):
    user = User.objects.create_user(name, password="pw-For-Tests-1")
    for role in roles:
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    client.force_login(user)


def stored_first(engine, store_dir, path: Path) -> tuple[Instance, bytes]:
    proc = storescu(port(engine), [path])
    assert store_status(proc) == ["Success"], proc.stdout + proc.stderr
    instance = Instance.objects.get()
    return instance, (store_dir / instance.path).read_bytes()


def test_identical_resend_is_success_and_changes_nothing(engine, store_dir, tmp_path, monkeypatch):
    first, _ = versions(tmp_path)
    with monkeypatch.context() as m:  # a first C-STORE computes no digest: only a resend needs one
        m.setattr(storage, "data_set_sha256", lambda path: pytest.fail("a new instance was hashed"))
        instance, raw = stored_first(engine, store_dir, first)
    assert instance.dataset_sha256 == ""
    before = snapshot(instance)

    proc = storescu(port(engine), [first, first])
    assert store_status(proc) == ["Success", "Success"], proc.stdout + proc.stderr
    # The first resend hashed both files and kept the stored version's digest on its row:
    # that of the data set in the file (File Meta Information left out).
    instance.refresh_from_db()
    offset = storage.data_set_offset(open(store_dir / instance.path, "rb"))
    assert instance.dataset_sha256 == hashlib.sha256(raw[offset:]).hexdigest()
    assert snapshot(instance) == before
    assert files_in(store_dir) == [store_dir / instance.path]
    assert (store_dir / instance.path).read_bytes() == raw
    assert not StoreConflict.objects.exists()
    assert not list((store_dir / ".incoming").iterdir())


def test_row_stored_before_digests_compares_with_its_file(engine, store_dir, tmp_path):
    """A row whose digest is not known yet (every row until its first resend; rows indexed before
    the column): the stored file's data set is hashed."""
    first, second = versions(tmp_path, patient_name="SECOND^PATIENT")
    instance, raw = stored_first(engine, store_dir, first)
    Instance.objects.filter(pk=instance.pk).update(dataset_sha256="")
    proc = storescu(port(engine), [first])
    assert store_status(proc) == ["Success"], proc.stdout + proc.stderr
    assert not StoreConflict.objects.exists()
    proc = storescu(port(engine), [second])
    assert store_status(proc) == ["Success"], proc.stdout + proc.stderr
    assert StoreConflict.objects.get().stored_sha256 == storage.data_set_sha256(store_dir / instance.path)
    assert (store_dir / instance.path).read_bytes() == raw


def test_other_content_kept_by_default_recorded_and_shown(engine, store_dir, tmp_path, settings, client, caplog):
    caplog.set_level("DEBUG")
    assert settings.STORE_OVERWRITE_POLICY == "keep"
    first, second = versions(tmp_path, patient_name="SECOND^PATIENT")
    instance, raw = stored_first(engine, store_dir, first)
    before = snapshot(instance)

    proc = storescu(port(engine), [second])
    assert store_status(proc) == ["Success"], proc.stdout + proc.stderr
    instance.refresh_from_db()  # nothing changed but the stored version's digest, now known
    assert snapshot(instance) == before
    assert files_in(store_dir) == [store_dir / instance.path]
    assert (store_dir / instance.path).read_bytes() == raw

    conflict = StoreConflict.objects.get()
    assert (conflict.policy, conflict.study_id, conflict.instance_id) == ("keep", instance.study_id, instance.pk)
    assert conflict.stored_sha256 == instance.dataset_sha256 == storage.data_set_sha256(store_dir / instance.path)
    assert conflict.received_sha256 and conflict.received_sha256 != conflict.stored_sha256
    by_keyword = {d["keyword"]: d for d in conflict.differences}
    assert set(by_keyword) == {"PatientName", "PixelData"}
    assert (by_keyword["PatientName"]["stored"], by_keyword["PatientName"]["received"]) == (
        "FIRST^PATIENT", "SECOND^PATIENT")
    assert by_keyword["PixelData"]["stored"] != by_keyword["PixelData"]["received"]
    assert any("PatientName" in str(getattr(r, "differences", "")) for r in caplog.records)
    assert_no_patient_values_logged(caplog, "FIRST^PATIENT", "SECOND^PATIENT", "PAT001")

    # Shown to the operator on the study page and listed on the reconciliation page.
    login(client, "tech", TECHNOLOGIST)
    page = client.get(reverse("imaging:reconcile_study", args=[instance.study_id]))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'id="conflicts"' in html and instance.sop_instance_uid in html
    assert "PatientName" in html and "SECOND^PATIENT" in html and "PixelData" in html
    listing = client.get(reverse("imaging:reconciliation")).content.decode()
    assert "PatientName, PixelData" in listing


def test_other_content_rejected(engine, store_dir, tmp_path, settings):
    settings.STORE_OVERWRITE_POLICY = "reject"
    first, second = versions(tmp_path, patient_id="OTHER-ID")
    instance, raw = stored_first(engine, store_dir, first)
    before = snapshot(instance)

    proc = storescu(port(engine), [second], extra=("-d",))
    assert status_codes(proc) == [0xC001], proc.stdout + proc.stderr
    assert snapshot(instance) == before
    assert files_in(store_dir) == [store_dir / instance.path]
    assert (store_dir / instance.path).read_bytes() == raw
    conflict = StoreConflict.objects.get()
    assert conflict.policy == "reject"
    assert {d["keyword"] for d in conflict.differences} == {"PatientID", "PixelData"}


def test_other_content_replaces_file_and_index_and_resends_an_archived_study(engine, store_dir, tmp_path, settings,
                                                                           caplog):
    caplog.set_level("DEBUG")
    settings.STORE_OVERWRITE_POLICY = "replace"
    first, second = versions(tmp_path, patient_name="SECOND^PATIENT", patient_id="PAT002")
    instance, raw = stored_first(engine, store_dir, first)
    # The study was completed and archived: its instance sent in batch 1 and committed.
    destination = VnaDestination.objects.create(name="vna", ae_title="VNA", host="127.0.0.1", port=1)
    with transaction.atomic():
        Study.objects.filter(pk=instance.study_id).update(status=im.ARCHIVED, batch=1, archived_at=timezone.now())
        Instance.objects.filter(pk=instance.pk).update(batch=1)
        Transfer.objects.create(study_id=instance.study_id, destination=destination, batch=1, status=tr.COMMITTED,
                                next_attempt_at=timezone.now())

    proc = storescu(port(engine), [second])
    assert store_status(proc) == ["Success"], proc.stdout + proc.stderr

    instance.refresh_from_db()
    stored = store_dir / instance.path
    assert dcmread(stored).PatientName == "SECOND^PATIENT"
    assert instance.dataset_sha256 == storage.data_set_sha256(stored) != hashlib.sha256(raw).hexdigest()
    assert instance.size == stored.stat().st_size and instance.batch is None  # to be sent again
    study = Study.objects.get(pk=instance.study_id)
    assert (study.patient_name, study.patient_id, study.status) == ("SECOND^PATIENT", "PAT002", im.RECEIVING)

    conflict = StoreConflict.objects.get()
    assert conflict.policy == "replace" and conflict.replaced_path.startswith(".replaced/")
    kept = store_dir / conflict.replaced_path
    assert kept.read_bytes() == raw
    assert files_in(store_dir) == sorted([stored, kept])
    assert {"PatientName", "PatientID", "PixelData"} <= {d["keyword"] for d in conflict.differences}
    assert_no_patient_values_logged(caplog, "FIRST^PATIENT", "SECOND^PATIENT", "PAT001", "PAT002")

    # The next completion sends the new version in batch 2; once that is committed the study is
    # archived and the replaced version deleted.
    with transaction.atomic():
        Study.objects.filter(pk=study.pk).update(status=im.COMPLETE, batch=2)
        Instance.objects.filter(pk=instance.pk).update(batch=2)
        Transfer.objects.create(study=study, destination=destination, batch=2, status=tr.COMMITTED,
                                next_attempt_at=timezone.now())
    assert kept.exists()
    with transaction.atomic():
        archive.maybe_archive(study.pk)
    assert Study.objects.get(pk=study.pk).status == im.ARCHIVED
    assert not kept.exists() and stored.exists()
    assert StoreConflict.objects.get().replaced_removed_at is not None


def test_replace_with_another_study_moves_the_instance(engine, store_dir, tmp_path, settings):
    settings.STORE_OVERWRITE_POLICY = "replace"
    other_study = new_uid()
    first, second = versions(tmp_path, study_instance_uid=other_study, series_instance_uid=new_uid())
    instance, raw = stored_first(engine, store_dir, first)
    old_study = instance.study_id

    proc = storescu(port(engine), [second])
    assert store_status(proc) == ["Success"], proc.stdout + proc.stderr
    instance.refresh_from_db()
    assert instance.study.study_instance_uid == other_study and instance.study_id != old_study
    assert instance.path.startswith(f"{other_study}/") and (store_dir / instance.path).is_file()
    conflict = StoreConflict.objects.get()
    assert conflict.study_id == old_study and (store_dir / conflict.replaced_path).read_bytes() == raw
    assert {"StudyInstanceUID", "SeriesInstanceUID"} <= {d["keyword"] for d in conflict.differences}


def test_keep_of_another_study_with_the_same_series_is_recorded(engine, store_dir, tmp_path):
    first, second = versions(tmp_path, study_instance_uid=new_uid())
    instance, raw = stored_first(engine, store_dir, first)
    before = snapshot(instance)
    proc = storescu(port(engine), [second])
    assert store_status(proc) == ["Success"], proc.stdout + proc.stderr
    assert snapshot(instance) == before and Study.objects.count() == 1
    assert files_in(store_dir) == [store_dir / instance.path]
    assert {d["keyword"] for d in StoreConflict.objects.get().differences} == {"StudyInstanceUID", "PixelData"}


def test_reject_of_another_study_keeps_everything(engine, store_dir, tmp_path, settings):
    settings.STORE_OVERWRITE_POLICY = "reject"
    first, second = versions(tmp_path, study_instance_uid=new_uid())
    instance, raw = stored_first(engine, store_dir, first)
    before = snapshot(instance)
    proc = storescu(port(engine), [second], extra=("-d",))
    assert status_codes(proc) == [0xC001], proc.stdout + proc.stderr
    assert snapshot(instance) == before and Study.objects.count() == 1
    assert files_in(store_dir) == [store_dir / instance.path]


@pytest.mark.parametrize("value,ok", [("replace", True), ("overwrite", False)])
def test_invalid_policy_fails_the_system_check(value, ok, index_path):
    if index_path != "postgresql":
        pytest.skip("the check does not depend on the index path")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "STORE_OVERWRITE_POLICY": value}
    proc = subprocess.run([sys.executable, "manage.py", "check"], cwd=root, env=env, capture_output=True, text=True)
    assert (proc.returncode == 0) is ok, proc.stderr
    if not ok:
        assert "pacs.E001" in proc.stderr and "STORE_OVERWRITE_POLICY" in proc.stderr


def test_replace_that_cannot_be_indexed_puts_the_old_version_back(engine, store_dir, tmp_path, settings, monkeypatch):
    """File and index change together: when the replacement's transaction fails (the database
    refuses its last statement), the sender gets 0xA700 and the stored version is back in place."""
    from django.db import DatabaseError

    from pacs.services import resends

    settings.STORE_OVERWRITE_POLICY = "replace"
    first, second = versions(tmp_path, patient_name="SECOND^PATIENT")
    instance, raw = stored_first(engine, store_dir, first)
    before = snapshot(instance)

    def refuse(**kwargs):
        raise DatabaseError("injected: the database refuses the conflict row")

    monkeypatch.setattr(resends, "record", refuse)
    proc = storescu(port(engine), [second], extra=("-d",))
    assert status_codes(proc) == [0xA700], proc.stdout + proc.stderr
    assert snapshot(instance) == before and not StoreConflict.objects.exists()
    assert (store_dir / instance.path).read_bytes() == raw
    assert files_in(store_dir) == [store_dir / instance.path]


def test_resend_while_the_first_is_being_indexed_keeps_the_stored_file(engine, store_dir, tmp_path, monkeypatch):
    """A modality resends (same content) on a second association while the first one's file is
    in place but not yet indexed; the first association's row commits before the second's index
    statement: Success, and the stored file is not removed by the second."""
    from pacs.services import images

    first, _ = versions(tmp_path)
    instance, raw = stored_first(engine, store_dir, first)
    row = Instance.objects.filter(pk=instance.pk).values().get()
    Instance.objects.filter(pk=instance.pk).delete()  # the first association's row: not committed yet
    committed = []

    def first_association_commits(original):
        def index(*args, **kwargs):
            if not committed:
                committed.append(Instance.objects.create(**row))
            return original(*args, **kwargs)
        return index

    monkeypatch.setattr(images, "_index", first_association_commits(images._index))
    proc = storescu(port(engine), [first])
    assert store_status(proc) == ["Success"], proc.stdout + proc.stderr
    assert committed and Instance.objects.get().pk == instance.pk
    assert (store_dir / instance.path).read_bytes() == raw
    assert not StoreConflict.objects.exists()
