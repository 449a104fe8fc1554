"""Celery tasks: thin adapters over ``pacs.services`` (row IDs in, idempotent, acknowledged late).

Task names are explicit and stable (queued messages survive deployments).
"""

from __future__ import annotations

from celery import shared_task, signals

from pacs.services import completion, prior_searches, priors
from pacs.services.routing import archive, schedule, sweep, transfers


@shared_task(name=schedule.TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def send_transfer(transfer_id: int) -> str:
    """Send one transfer row to its VNA (``pacs.services.routing.transfers.run_transfer``)."""
    return transfers.run_transfer(transfer_id)


@shared_task(name="pacs.imaging_sweep", acks_late=True, ignore_result=True)
def imaging_sweep() -> dict:
    """Periodic: complete quiet studies, re-queue transfers no worker holds."""
    return {"completed": completion.sweep_quiet_studies(), "requeued": sweep.sweep(),
            "priors_requeued": priors.sweep(), "prior_searches_requeued": prior_searches.sweep()}


@shared_task(name=priors.FIND_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def find_priors(self, requested_procedure_id: int) -> int:
    """Find and choose the priors of a new requested procedure (``pacs.services.priors.find_priors``);
    a VNA that could not be asked is asked again with the transfers' backoff."""
    from django.conf import settings

    from pacs.services.routing.sending import TransientError

    last = self.request.retries >= settings.TRANSFER_MAX_ATTEMPTS - 1
    try:
        return len(priors.find_priors(requested_procedure_id, last_attempt=last))
    except TransientError as exc:
        countdown = schedule.backoff_seconds(self.request.retries + 1)
        prior_searches.postpone(requested_procedure_id, countdown)
        raise self.retry(countdown=countdown, max_retries=settings.TRANSFER_MAX_ATTEMPTS) from exc


@shared_task(name=priors.FETCH_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def fetch_prior(prior_id: int) -> str:
    """Fetch one prior from its VNA by C-MOVE or WADO-RS (``pacs.services.priors.run_fetch``)."""
    return priors.run_fetch(prior_id)


@shared_task(name="pacs.purge_archived", acks_late=True, ignore_result=True)
def purge_archived() -> int:
    """Periodic: delete local copies of studies archived longer than ARCHIVE_RETENTION_DAYS."""
    return archive.purge_archived()


@signals.worker_init.connect(dispatch_uid="pacs.tasks.import_senders")
def import_senders(**kwargs) -> None:
    """Import the VNA senders and the priors clients (pydicom, pynetdicom: about 0.4 s) once in the worker's
    main process, before the pool forks its children, instead of in each child's first transfer."""
    from pacs import qr_dicomweb, qr_scu, scu, stow  # noqa: F401
