"""Knowing a study is complete (no DICOM message says so for the images themselves): by MPPS
COMPLETED (PS3.4 F.7; IHE RAD-7, Modality Procedure Step Completed) with every instance its
Performed Series Sequence lists stored, or, for a modality that sends no MPPS, by the quiet
period; a late instance re-opens the study and the next completion sends only it; a complete,
matched study is on the reading worklist; the transfer rows are written in the completing
transaction."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from pacs.models import Instance, Study, Transfer, TransferItem, VnaDestination
from pacs.models import images as im
from pacs.services import completion
from ris.models import StatusChange
from tests.factories import make_patient, make_step
from tests.support.dicom import port
from tests.support.mpps import completion_dataset, n_create_dataset
from tests.support.orthanc import storescu, write_study
from worklist.models import ReadingItem

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def step(transactional_db):
    return make_step(make_patient("DOE^JOHN", "P1"), accession="ACC1", modality="CT", station="CT1")


@pytest.fixture
def no_broker(settings):
    """No destination is configured in these tests: nothing is queued."""
    settings.VNA_DESTINATIONS = ""


def send(engine, tmp_path, step, n, **kwargs):
    rp = step.requested_procedure
    paths = write_study(tmp_path / generate_uid(), n, study_instance_uid=rp.study_instance_uid,
                        accession_number=rp.accession_number, patient_id="P1", patient_name="DOE^JOHN", **kwargs)
    proc = storescu(port(engine), paths)
    assert proc.returncode == 0, proc.stderr
    return Study.objects.get(study_instance_uid=rp.study_instance_uid), paths


def test_quiet_period_completes_a_matched_study_and_puts_it_on_the_reading_worklist(engine, tmp_path, step,
                                                                                  settings, no_broker):
    settings.STUDY_QUIET_PERIOD_SECONDS = 60
    study, _ = send(engine, tmp_path, step, 3)
    assert completion.sweep_quiet_studies() == 0  # too early
    assert completion.sweep_quiet_studies(now=timezone.now() + dt.timedelta(seconds=61)) == 1
    study.refresh_from_db()
    assert study.status == im.COMPLETE and study.batch == 1
    assert set(Instance.objects.filter(study=study).values_list("batch", flat=True)) == {1}
    assert ReadingItem.objects.filter(requested_procedure=step.requested_procedure).exists()
    change = StatusChange.objects.get(entity="study", object_id=study.pk, to_status=im.COMPLETE)
    assert "no instance for 60 s" in change.cause


def test_unmatched_study_does_not_complete(engine, tmp_path, settings, no_broker):
    paths = write_study(tmp_path / "x", 1, study_instance_uid=generate_uid(), accession_number="UNKNOWN")
    assert storescu(port(engine), paths).returncode == 0
    assert completion.sweep_quiet_studies(now=timezone.now() + dt.timedelta(hours=1)) == 0
    assert Study.objects.get().status == im.RECEIVING


def test_mpps_completed_and_every_listed_instance_stored_completes(engine, tmp_path, step, no_broker):
    """N-CREATE, N-SET COMPLETED listing 3 instances: complete only when the third arrives."""
    rp = step.requested_procedure
    series_uid = generate_uid()
    ds_set, uids = completion_dataset(n_images=3)
    ds_set.PerformedSeriesSequence[0].SeriesInstanceUID = series_uid
    paths = []
    for n, uid in enumerate(uids, start=1):
        (path,) = write_study(tmp_path / f"i{n}", 1, study_instance_uid=rp.study_instance_uid,
                              series_instance_uid=series_uid, accession_number=rp.accession_number,
                              patient_id="P1", patient_name="DOE^JOHN")
        from pydicom import dcmread

        ds = dcmread(path)
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    assert storescu(port(engine), paths[:2]).returncode == 0

    ae = AE(ae_title="CT1")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port(engine), ae_title="PACS")
    assert assoc.is_established
    mpps_uid = generate_uid()
    status, _ = assoc.send_n_create(n_create_dataset(step), ModalityPerformedProcedureStep, mpps_uid)
    assert status.Status == 0
    status, _ = assoc.send_n_set(ds_set, ModalityPerformedProcedureStep, mpps_uid)
    assert status.Status == 0
    assoc.release()

    study = Study.objects.get(study_instance_uid=rp.study_instance_uid)
    assert study.status == im.RECEIVING  # one listed instance missing
    assert storescu(port(engine), paths[2:]).returncode == 0
    study.refresh_from_db()
    assert study.status == im.COMPLETE and study.batch == 1
    change = StatusChange.objects.get(entity="study", object_id=study.pk, to_status=im.COMPLETE)
    assert "MPPS COMPLETED" in change.cause


def test_late_instance_reopens_and_is_scheduled_alone_with_transfer_rows(engine, tmp_path, step, settings):
    settings.STUDY_QUIET_PERIOD_SECONDS = 1
    VnaDestination.objects.create(name="vna", kind="dicom", ae_title="VNA", host="127.0.0.1", port=1)
    study, paths = send(engine, tmp_path, step, 2)
    later = timezone.now() + dt.timedelta(seconds=5)
    assert completion.sweep_quiet_studies(now=later) == 1
    first = Transfer.objects.get(study=study)
    assert first.batch == 1 and TransferItem.objects.filter(transfer=first).count() == 2

    late = write_study(tmp_path / "late", 1, study_instance_uid=study.study_instance_uid,
                       accession_number="ACC1", patient_id="P1", patient_name="DOE^JOHN")
    assert storescu(port(engine), late).returncode == 0
    study.refresh_from_db()
    assert study.status == im.RECEIVING
    assert StatusChange.objects.filter(entity="study", object_id=study.pk, to_status=im.RECEIVING).exists()
    assert completion.sweep_quiet_studies(now=timezone.now() + dt.timedelta(seconds=5)) == 1
    second = Transfer.objects.get(study=study, batch=2)
    items = list(TransferItem.objects.filter(transfer=second).values_list("instance__batch", flat=True))
    assert items == [2]
    # A resend of an already-sent instance is idempotent and does not re-open the study.
    assert storescu(port(engine), paths[:1]).returncode == 0
    study.refresh_from_db()
    assert study.status == im.COMPLETE


def test_rolled_back_completion_writes_no_transfer_and_queues_nothing(engine, tmp_path, step, settings):
    """Transfer rows and their tasks belong to the completing transaction:
    nothing reaches the broker (Redis) when it rolls back, one task when it commits."""
    import redis
    from django.db import transaction

    from tests.support.celery_worker import BROKER

    queue = redis.Redis.from_url(BROKER)
    queue.delete("celery")
    settings.STUDY_QUIET_PERIOD_SECONDS = 1
    VnaDestination.objects.create(name="vna", kind="dicom", ae_title="VNA", host="127.0.0.1", port=1)
    study, _ = send(engine, tmp_path, step, 1)
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            completion.check_study(study.pk, now=timezone.now() + dt.timedelta(seconds=5))
            assert Transfer.objects.filter(study=study).count() == 1
            raise RuntimeError("rolled back")
    assert queue.llen("celery") == 0 and Transfer.objects.count() == 0
    assert Study.objects.get(pk=study.pk).status == im.RECEIVING
    assert completion.check_study(study.pk, now=timezone.now() + dt.timedelta(seconds=5))
    assert Transfer.objects.count() == 1 and queue.llen("celery") == 1
    queue.delete("celery")
