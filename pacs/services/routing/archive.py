"""The end of a study's journey on this engine: archived once every VNA committed every instance
(Storage Commitment, PS3.4 J.3.3), its local files purged ``ARCHIVE_RETENTION_DAYS`` later.
Nothing is deleted before the study is ARCHIVED.

A purged study fetched back from the VNA (``pacs.services.recall``) is restored when every one
of its instances has its file again (``restore_purged``); its retention then counts from the
recall (``recalled_at``), so the cached copy is purged again ``ARCHIVE_RETENTION_DAYS`` later."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from pacs import storage
from pacs.models import Instance, Study, Transfer
from pacs.models import images as im
from pacs.models import transfers as tr
from pacs.services import resends
from ris.services.transitions import transition


def maybe_archive(study_id: int) -> None:
    """Inside the transaction that committed a transfer: archive the study when every batch
    went to every destination and all of those transfers are committed."""
    study = Study.objects.select_for_update().get(pk=study_id)
    if study.status != im.COMPLETE:
        return
    if Instance.objects.filter(study=study, batch__isnull=True).exists():
        return
    # The images' transfers: a re-send with a patient's corrected attributes (patient_update)
    # neither holds back nor makes the archiving; it only keeps the files until it ends (purge).
    transfers = Transfer.objects.filter(study=study, patient_update=0)
    if not transfers.exists() or transfers.exclude(status=tr.COMMITTED).exists():
        return
    # Every batch sent to every destination must be covered.
    for batch in range(1, study.batch + 1):
        if Instance.objects.filter(study=study, batch=batch).exists() and not transfers.filter(batch=batch).exists():
            return
    study.archived_at = timezone.now()
    study.save(update_fields=["archived_at", "updated_at"])
    transition(study, im.ARCHIVED, entity="study", cause="every instance committed by every VNA", actor="routing")
    resends.release_replaced_on_commit(study.pk)  # versions replaced by a resend: the VNA has the new ones


def purge_archived(*, now: dt.datetime | None = None) -> int:
    """Delete local files of studies archived more than ARCHIVE_RETENTION_DAYS ago (0: never).
    Only ARCHIVED studies qualify: nothing is deleted before storage commitment, nor while a
    transfer of the study is still open (a re-send with a patient's corrected attributes)."""
    days = settings.ARCHIVE_RETENTION_DAYS
    if days <= 0:
        return 0
    now = now or timezone.now()
    purged = 0
    cutoff = now - dt.timedelta(days=days)
    for study in Study.objects.filter(Q(recalled_at__isnull=True) | Q(recalled_at__lt=cutoff), status=im.ARCHIVED,
                                      purged_at__isnull=True, archived_at__lt=cutoff):
        with transaction.atomic():
            locked = Study.objects.select_for_update().get(pk=study.pk)
            if locked.status != im.ARCHIVED or Transfer.objects.filter(study=locked, status__in=tr.OPEN).exists():
                continue
            for path in Instance.objects.filter(study=locked).values_list("path", flat=True):
                storage.remove_instance_file(path)
            locked.purged_at = now
            locked.save(update_fields=["purged_at", "updated_at"])
            purged += 1
    return purged


def restore_purged(study_instance_uid: str, *, now: dt.datetime | None = None) -> bool:
    """Inside the caller's transaction: a purged study whose every instance has its file again
    (fetched back from the VNA) is held again: ``purged_at`` cleared, ``recalled_at`` set (the
    retention clock starts again).  Returns whether the study is held now (False: still purged,
    or no such study)."""
    study = Study.objects.select_for_update().filter(study_instance_uid=study_instance_uid).first()
    if study is None:
        return False
    if study.purged_at is None:
        return True
    paths = list(Instance.objects.filter(study=study).values_list("path", flat=True))
    if not paths or not all(storage.absolute_path(p).exists() for p in paths):
        return False
    study.purged_at, study.recalled_at = None, now or timezone.now()
    study.save(update_fields=["purged_at", "recalled_at", "updated_at"])
    return True
