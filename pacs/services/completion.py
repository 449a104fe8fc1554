"""Knowing a study is complete (an MPPS COMPLETED, PS3.4 F.7.2.2, or a quiet
period like Orthanc's StableAge).

A study is complete when it is matched to its order and either
- an MPPS for it says COMPLETED (PS3.4 F.7.2.2) and every instance it lists has arrived, or
- no instance has arrived for ``STUDY_QUIET_PERIOD_SECONDS`` (no MPPS, or an MPPS that
  never completed).

Completing writes, in one transaction: the next batch number on every instance not sent
yet, the study's status (``transition``), one transfer per enabled VNA destination for
that batch (``pacs.services.routing.schedule.schedule_batch``), and what the receivers of
``pacs.signals.study_completed`` write (the reading worklist lists the study).  The Celery
tasks are queued after the commit.  A late instance re-opens the study
(``pacs.services.images``) and the next completion sends only it.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db import transaction
from django.dispatch import receiver
from django.utils import timezone

from pacs.models import Instance, PerformedInstance, PerformedProcedureStep, Study
from pacs.models import images as im
from pacs.models import mpps as mp
from pacs.services import order_matching
from pacs.signals import mpps_completed, study_completed
from ris.services.transitions import transition

log = logging.getLogger("pacs.completion")


def _mpps_for(study: Study):
    steps = PerformedProcedureStep.objects.filter(study_instance_uid=study.study_instance_uid)
    if study.requested_procedure_id:
        steps = steps | PerformedProcedureStep.objects.filter(
            scheduled_step__requested_procedure_id=study.requested_procedure_id
        )
    return steps.distinct()


def mpps_says_complete(study: Study) -> bool:
    """An MPPS of this study is COMPLETED, none is still IN PROGRESS, and every instance
    the completed ones list (PerformedSeriesSequence) is stored."""
    steps = list(_mpps_for(study).values_list("pk", "status"))
    if not steps or any(status == mp.IN_PROGRESS for _, status in steps):
        return False
    completed = [pk for pk, status in steps if status == mp.COMPLETED]
    if not completed:
        return False
    listed = set(
        PerformedInstance.objects.filter(performed_procedure_step_id__in=completed).values_list(
            "sop_instance_uid", flat=True
        )
    )
    if not listed:
        return True
    stored = set(Instance.objects.filter(sop_instance_uid__in=listed).values_list("sop_instance_uid", flat=True))
    return listed <= stored


def check_study(study_id: int, *, now: dt.datetime | None = None, cause: str = "") -> bool:
    """Complete the study if it is matched and finished.  True if this call completed it."""
    now = now or timezone.now()
    with transaction.atomic():
        study = Study.objects.select_for_update().get(pk=study_id)
        if study.status != im.RECEIVING:
            return False
        if study.requested_procedure_id is None:
            if not order_matching.match_study(study):
                return False  # waits on the reconciliation page
        quiet = now - study.last_received_at >= dt.timedelta(seconds=settings.STUDY_QUIET_PERIOD_SECONDS)
        if mpps_says_complete(study):
            reason = "MPPS COMPLETED and every listed instance stored"
        elif quiet:
            reason = f"no instance for {settings.STUDY_QUIET_PERIOD_SECONDS} s"
        else:
            return False
        complete_study(study, cause=f"{reason}{'; ' + cause if cause else ''}", now=now)
        return True


def complete_study(study: Study, *, cause: str, now: dt.datetime) -> None:
    """Inside the caller's transaction, on a locked, matched study (see module docstring)."""
    # Here, not at the top: routing loads pydicom, which the processes that only load the apps
    # (this module listens to mpps_completed) would otherwise import at start (web, MLLP).
    from pacs.services.routing import schedule

    batch = study.batch + 1
    pending = Instance.objects.filter(study=study, batch__isnull=True)
    pending_ids = list(pending.values_list("pk", flat=True))
    study.batch = batch
    study.completed_at = now
    study.save(update_fields=["batch", "completed_at", "updated_at"])
    Instance.objects.filter(pk__in=pending_ids).update(batch=batch)
    transition(study, im.COMPLETE, entity="study", cause=cause[:255], actor="completion")
    if pending_ids:
        schedule.schedule_batch(study, batch, pending_ids)
    study_completed.send(sender=Study, study=study, requested_procedure_id=study.requested_procedure_id,
                         completed_at=now)
    # accession_number is masked in the log output unless LOG_ACCESSION_NUMBERS (project.logs).
    log.info("study complete", extra={"study_id": study.pk, "batch": batch, "instances": len(pending_ids),
                                      "accession_number": study.accession_number})


def sweep_quiet_studies(*, now: dt.datetime | None = None) -> int:
    """Complete every receiving study whose quiet period has passed (periodic task)."""
    now = now or timezone.now()
    limit = now - dt.timedelta(seconds=settings.STUDY_QUIET_PERIOD_SECONDS)
    done = 0
    for study_id in Study.objects.filter(status=im.RECEIVING, last_received_at__lte=limit).values_list("pk", flat=True):
        try:
            done += check_study(study_id, now=now, cause="quiet-period sweep")
        except Exception:  # noqa: BLE001 - one bad study must not stop the sweep
            log.exception("completion check failed", extra={"study_id": study_id})
    return done


@receiver(mpps_completed, dispatch_uid="pacs.completion.on_mpps_completed")
def on_mpps_completed(sender, performed_procedure_step, **kwargs):
    """Sent inside the MPPS N-SET transaction: check the studies it names."""
    pps = performed_procedure_step
    studies = Study.objects.filter(study_instance_uid=pps.study_instance_uid)
    if pps.scheduled_step_id:
        studies = studies | Study.objects.filter(requested_procedure__steps=pps.scheduled_step_id)
    for study_id in set(studies.filter(status=im.RECEIVING).values_list("pk", flat=True)):
        check_study(study_id, cause=f"MPPS {pps.sop_instance_uid}")
