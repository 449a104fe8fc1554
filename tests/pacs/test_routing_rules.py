# ruff: noqa: F811 - pytest fixtures imported from helper modules
"""Routing rules without a worker: destinations from the environment, backoff, the storage
commitment report (event type 2), commitment timeout, permanent association rejection,
operator retry/cancel recorded with the user, retention purge only after archiving."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pacs import storage
from pacs.dimse.commitment import report_from_dataset
from pacs.models import Instance, Study, Transfer, TransferItem, VnaDestination
from pacs.models import images as im
from pacs.models import transfers as tr
from pacs.services.routing import actions, archive, commitment, destinations, schedule, sending, sweep, transfers
from project.delivery.destinations import parse_vna
from ris.models import StatusChange
from tests.factories import committing_transfer
from tests.support.dicom import port
from tests.support.orthanc import OrthancProcess

pytestmark = pytest.mark.django_db


def test_parse_destinations_from_the_environment():
    parsed = parse_vna(
        "dicom://ORTHANC@vna-host:4242, stow+https://user:secret@vna-host:8443/dicom-web/")
    assert parsed[0] | {} == {"name": "env:dicom://ORTHANC@vna-host:4242", "kind": "dicom", "ae_title": "ORTHANC",
                              "host": "vna-host", "port": 4242, "url": "", "tls": False,
                              "adt_host": "", "adt_port": None, "adt_tls": False}
    assert parsed[1]["kind"] == "stow" and parsed[1]["url"] == "https://vna-host:8443/dicom-web"
    assert parsed[1]["username"] == "user" and parsed[1]["password"] == "secret"
    assert "secret" not in parsed[1]["name"]
    with pytest.raises(ValueError):
        parse_vna("ftp://nowhere")
    with pytest.raises(ValueError):
        parse_vna("dicom://AE_TITLE_LONGER_THAN_16@h:1")


def test_sync_disables_destinations_removed_from_the_environment(settings):
    settings.VNA_DESTINATIONS = "dicom://A@h:1,dicom://B@h:2"
    assert len(destinations.sync_environment_destinations()) == 2
    settings.VNA_DESTINATIONS = "dicom://B@h:2"
    destinations.sync_environment_destinations()
    assert set(VnaDestination.objects.filter(enabled=True).values_list("ae_title", flat=True)) == {"B"}


def test_backoff_is_exponential_with_jitter_and_capped(settings):
    settings.TRANSFER_RETRY_BASE_SECONDS = 10
    settings.TRANSFER_RETRY_MAX_SECONDS = 300
    for attempts, ceiling in [(1, 10), (2, 20), (3, 40), (6, 300), (30, 300)]:
        values = {schedule.backoff_seconds(attempts) for _ in range(50)}
        assert all(ceiling / 2 <= v <= ceiling for v in values)
        assert len(values) > 1  # jitter


def test_transfers_and_prior_fetches_give_up_at_transfer_max_attempts(settings):
    settings.TRANSFER_MAX_ATTEMPTS = 3
    settings.TRANSFER_RETRY_BASE_SECONDS = 10
    settings.TRANSFER_RETRY_MAX_SECONDS = 300
    before = timezone.now()
    retry = schedule.next_attempt(2)
    assert 10 <= retry.delay <= 20 and before + dt.timedelta(seconds=retry.delay) <= retry.at
    assert schedule.next_attempt(3) is None


@pytest.fixture
def transfer(store_dir):
    return committing_transfer()


def _report(t, committed, failed):
    ds = Dataset()
    ds.TransactionUID = t.transaction_uid
    ds.ReferencedSOPSequence = []
    for uid in committed:
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.3"
        item.ReferencedSOPInstanceUID = uid
        ds.ReferencedSOPSequence.append(item)
    ds.FailedSOPSequence = []
    for uid in failed:
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.3"
        item.ReferencedSOPInstanceUID = uid
        item.FailureReason = 0x0110
        ds.FailedSOPSequence.append(item)
    return report_from_dataset(ds)


def test_event_type_2_sends_the_failed_instances_again(transfer, django_capture_on_commit_callbacks):
    uids = list(Instance.objects.values_list("sop_instance_uid", flat=True))
    with django_capture_on_commit_callbacks() as callbacks:
        status = commitment.record_commitment(*_report(transfer, uids[:2], uids[2:]))
    assert status == tr.RETRYING and len(callbacks) == 1  # one task queued, after commit
    transfer.refresh_from_db()
    assert "not committed" in transfer.reason and "0x0110" in transfer.reason
    assert TransferItem.objects.filter(transfer=transfer, status=tr.ITEM_COMMITTED).count() == 2
    assert TransferItem.objects.filter(transfer=transfer, status=tr.ITEM_PENDING).count() == 1
    assert transfer.study.status == im.COMPLETE  # not archived


def test_event_type_1_commits_and_archives_and_a_repeat_changes_nothing(transfer):
    uids = list(Instance.objects.values_list("sop_instance_uid", flat=True))
    assert commitment.record_commitment(*_report(transfer, uids, [])) == tr.COMMITTED
    assert Study.objects.get(pk=transfer.study_id).status == im.ARCHIVED
    assert commitment.record_commitment(*_report(transfer, uids, [])) == tr.COMMITTED
    assert commitment.record_commitment("1.2.3.999", uids, []) is None
    assert StatusChange.objects.filter(entity="transfer", object_id=transfer.pk, to_status=tr.COMMITTED).count() == 1


def test_missing_report_times_out_and_the_sweep_requeues(transfer, settings, monkeypatch):
    settings.STORAGE_COMMITMENT_TIMEOUT_SECONDS = 60
    queued = []
    monkeypatch.setattr(schedule, "publish", lambda pk, countdown=None: queued.append(pk))
    assert sweep.sweep() == 0
    assert sweep.sweep(now=timezone.now() + dt.timedelta(seconds=61)) == 1
    assert queued == [transfer.pk]


def test_operator_cancel_and_retry_are_recorded_with_the_user(transfer, django_capture_on_commit_callbacks):
    actions.cancel(transfer.pk, actor="alice")
    with django_capture_on_commit_callbacks() as callbacks:
        actions.retry(transfer.pk, actor="bob")
    assert len(callbacks) == 1
    changes = list(StatusChange.objects.filter(entity="transfer", object_id=transfer.pk).values_list(
        "to_status", "actor"))
    assert changes[-2:] == [(tr.CANCELED, "alice"), (tr.RETRYING, "bob")]
    with pytest.raises(actions.TransferActionError):
        Transfer.objects.filter(pk=transfer.pk).update(status=tr.COMMITTED)
        actions.retry(transfer.pk, actor="bob")


def test_retention_purges_only_archived_studies_after_the_period(transfer, settings):
    paths = [storage.absolute_path(p) for p in Instance.objects.values_list("path", flat=True)]
    settings.ARCHIVE_RETENTION_DAYS = 0
    assert archive.purge_archived(now=timezone.now() + dt.timedelta(days=999)) == 0
    settings.ARCHIVE_RETENTION_DAYS = 7
    assert archive.purge_archived(now=timezone.now() + dt.timedelta(days=30)) == 0  # committing, not archived
    assert all(p.exists() for p in paths)
    uids = list(Instance.objects.values_list("sop_instance_uid", flat=True))
    commitment.record_commitment(*_report(transfer, uids, []))
    assert archive.purge_archived(now=timezone.now() + dt.timedelta(days=6)) == 0
    assert archive.purge_archived(now=timezone.now() + dt.timedelta(days=8)) == 1
    assert not any(p.exists() for p in paths)


@pytest.mark.django_db(transaction=True)
def test_association_rejected_permanently_fails_at_once(tmp_path, transfer, settings):
    """Orthanc rejects a wrong called AE title (rejected-permanent): no retry, the reason shown."""
    vna = OrthancProcess(tmp_path / "o", engine_port=11112).start()
    try:
        VnaDestination.objects.filter(pk=transfer.destination_id).update(ae_title="WRONG_AE", port=vna.dicom_port)
        TransferItem.objects.filter(transfer=transfer).update(status=tr.ITEM_PENDING)
        Transfer.objects.filter(pk=transfer.pk).update(status=tr.RETRYING, next_attempt_at=timezone.now())
        assert transfers.run_transfer(transfer.pk) == tr.FAILED
        failed = Transfer.objects.get(pk=transfer.pk)
        assert "rejected" in failed.reason and "WRONG_AE" in failed.reason and failed.attempts == 2
    finally:
        vna.stop()


@pytest.mark.parametrize("value,ok", [
    ("dicom://ORTHANC@vna:4242,stow+http://vna:8042/dicom-web", True),
    ("ftp://vna", False),
    ("dicom://ORTHANC@vna", False),
])
def test_bad_vna_destinations_are_reported_by_the_system_checks(value, ok):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "VNA_DESTINATIONS": value}
    proc = subprocess.run([sys.executable, "manage.py", "check"], cwd=root, env=env, capture_output=True, text=True)
    assert (proc.returncode == 0) is ok, proc.stderr
    if not ok:
        assert "pacs.E001" in proc.stderr and "VNA_DESTINATIONS" in proc.stderr


@pytest.mark.django_db(transaction=True)
def test_commitment_report_answered_processing_failure_when_the_database_is_down(engine, transfer):
    """The N-EVENT-REPORT arrives over a real association; with the database unreachable it is
    answered 0x0110 (the VNA sends it again), and recorded once the database is back."""
    from django.db import connections
    from pynetdicom import AE
    from pynetdicom.sop_class import StorageCommitmentPushModel

    uids = list(Instance.objects.values_list("sop_instance_uid", flat=True))
    ds = Dataset()
    ds.TransactionUID = transfer.transaction_uid
    ds.ReferencedSOPSequence = []
    for uid in uids:
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.3"
        item.ReferencedSOPInstanceUID = uid
        ds.ReferencedSOPSequence.append(item)

    def report():
        ae = AE(ae_title="VNA")
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", port(engine), ae_title="PACS")
        assert assoc.is_established
        try:
            status, _ = assoc.send_n_event_report(ds, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
            return int(status.Status)
        finally:
            assoc.release()

    db = connections.settings["default"]
    real_port = db.get("PORT")
    ae = AE(ae_title="VNA")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", port(engine), ae_title="PACS")
    assert assoc.is_established
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    db["PORT"] = "1"
    try:
        status, _ = assoc.send_n_event_report(ds, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
    finally:
        db["PORT"] = real_port
        assoc.release()
    assert int(status.Status) == 0x0110
    assert Transfer.objects.get(pk=transfer.pk).status == tr.COMMITTING
    assert report() == 0x0000
    assert Transfer.objects.get(pk=transfer.pk).status == tr.COMMITTED


@pytest.mark.parametrize("status,raised", [(0x0000, None), (0xA700, sending.TransientError),
                                           (0x0112, sending.PermanentError)])
def test_storage_commitment_n_action_as_a_pynetdicom_scp_receives_it(status, raised):
    """The N-ACTION (PS3.4 J.3.2) over the engine's requestor, read by pynetdicom as the VNA:
    action type 1 on the well-known instance, the TransactionUID and every reference; its
    status classified (0xA7xx: retry later; any other failure: permanent)."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StorageCommitmentPushModel

    from pacs import scu

    received = []

    def on_n_action(event):
        received.append((event.request.ActionTypeID, event.request.RequestedSOPInstanceUID, event.action_information))
        return status, None

    ae = AE(ae_title="VNA")
    ae.add_supported_context(StorageCommitmentPushModel, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_N_ACTION, on_n_action)])
    destination = VnaDestination(name="peer", ae_title="VNA", host="127.0.0.1", port=server.server_address[1])
    refs = [("1.2.840.10008.5.1.4.1.1.2", generate_uid()) for _ in range(3)]
    transaction_uid = generate_uid()
    try:
        if raised is None:
            scu.request_commitment(destination, transaction_uid, refs)
        else:
            with pytest.raises(raised, match=f"0x{status:04X}"):
                scu.request_commitment(destination, transaction_uid, refs)
    finally:
        server.shutdown()
    [(action_type, instance, information)] = received
    assert action_type == 1 and instance == scu.STORAGE_COMMITMENT_INSTANCE
    assert information.TransactionUID == transaction_uid
    assert [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in information.ReferencedSOPSequence] == refs


def test_storage_commitment_not_offered_by_the_vna_is_permanent():
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from pacs import scu

    ae = AE(ae_title="VNA")
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", 0), block=False)
    destination = VnaDestination(name="peer", ae_title="VNA", host="127.0.0.1", port=server.server_address[1])
    try:
        with pytest.raises(sending.PermanentError, match="Storage Commitment Push Model not accepted"):
            scu.request_commitment(destination, generate_uid(), [("1.2.840.10008.5.1.4.1.1.2", generate_uid())])
    finally:
        server.shutdown()


@pytest.mark.django_db(transaction=True)
def test_progress_is_recorded_without_waiting_for_the_flush_and_only_that_transaction(transfer):
    """record_outcomes commits with synchronous_commit off for its own transaction only: the
    session (every other transaction of the worker) keeps waiting for the WAL flush."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    Transfer.objects.filter(pk=transfer.pk).update(status=tr.IN_PROGRESS, lease_expires_at=timezone.now())
    TransferItem.objects.filter(transfer=transfer).update(status=tr.ITEM_PENDING)
    items = list(TransferItem.objects.filter(transfer=transfer).values_list("pk", flat=True))
    with CaptureQueriesContext(connection) as queries:
        transfers.record_outcomes(transfer.pk, [sending.ItemOutcome(pk, True) for pk in items])
    assert any("SET LOCAL synchronous_commit TO OFF" in q["sql"] for q in queries.captured_queries)
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "on"
    assert TransferItem.objects.filter(transfer=transfer, status=tr.ITEM_SENT).count() == 3
    assert Transfer.objects.get(pk=transfer.pk).lease_expires_at > timezone.now()
