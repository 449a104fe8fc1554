"""A study purged locally after archiving, fetched back from the VNA when a client asks for it.

``ARCHIVE_RETENTION_DAYS`` after a study is archived its local files are purged
(``pacs.services.routing.archive.purge_archived``); the index keeps its rows, so QIDO-RS and
C-FIND still find it.  When a client retrieves it (DICOMweb WADO-RS / WADO-URI, PS3.18 10.4 / 9;
Query/Retrieve C-MOVE / C-GET, PS3.4 C.4.2 / C.4.3), ``request`` queues a **recall**: a fetch of
the study from a VNA that holds it, on the one fetch path the relevant priors use
(``pacs.models.Prior`` with purpose ``recall``, Celery task ``pacs.fetch_prior``,
``pacs.services.priors.run_fetch``: leases, backoff, attempts, the reason of the last failure,
shown on the fetches page): by C-MOVE to the engine's own AE from a DICOM VNA, by WADO-RS Retrieve
Study (PS3.18 10.4) from a VNA the study was sent to by STOW-RS.  The instances come back through
the one writer of received instances (``pacs.services.images`` puts each file back in place);
when every instance is back the study is held again and its retention counts from the recall
(``routing.archive.restore_purged``).

The adapters answer "being fetched, retry later" meanwhile, after waiting at most
``RECALL_WAIT_SECONDS`` for a recall that completes quickly (``wait``).  A study no enabled VNA
is known to hold (none committed it; it was not fetched from one) cannot be recalled.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from audit import trail
from pacs import auditing
from pacs.models import Prior, Study, Transfer, VnaDestination
from pacs.models import priors as pr
from pacs.models import transfers as tr
from pacs.services import priors
from project.auditing import events

log = logging.getLogger("pacs.recall")

HELD = "held"  # the engine holds the study's files: serve it
FETCHING = "fetching"  # a recall is under way: answer "retry later"
UNAVAILABLE = "unavailable"  # purged and no VNA to fetch it from


@dataclass(frozen=True)
class Recall:
    state: str
    reason: str = ""
    fetch_id: int | None = None
    retry_after: int = 0  # seconds a client should wait before asking again (FETCHING)


def archives_of(study: Study) -> list[VnaDestination]:
    """The enabled VNAs known to hold the study: those that committed a transfer of it (Storage
    Commitment, PS3.4 J.3.3; for STOW-RS, which has none, every instance in the answer's
    ReferencedSOPSequence: ``pacs.stow``), then those it was fetched from as a prior or a
    recall.  DICOM and STOW-RS VNAs alike: the fetch asks each the way it can answer
    (``priors.client``)."""
    committed = Transfer.objects.filter(study=study, status=tr.COMMITTED).values("destination_id")
    fetched = Prior.objects.filter(
        study_instance_uid=study.study_instance_uid, status=pr.READY, source__isnull=False
    ).values("source_id")
    found = VnaDestination.objects.filter(Q(pk__in=committed) | Q(pk__in=fetched), enabled=True,
                                          kind__in=(tr.KIND_DICOM, tr.KIND_STOW))
    by_commit = set(committed.values_list("destination_id", flat=True))
    return sorted(found, key=lambda v: (v.pk not in by_commit, v.pk))


def _retry_after(fetch: Prior, now: dt.datetime) -> int:
    """``RECALL_RETRY_AFTER_SECONDS``, or until the next attempt of a recall waiting to retry."""
    seconds = settings.RECALL_RETRY_AFTER_SECONDS
    if fetch.status == pr.RETRYING and fetch.next_attempt_at:
        seconds = max(seconds, (fetch.next_attempt_at - now).total_seconds())
    return max(1, int(seconds + 0.999))


def _fetching(fetch: Prior, now: dt.datetime) -> Recall:
    reason = "it is being fetched from the archive"
    if fetch.reason:
        reason += f" (attempt {fetch.attempts} failed: {fetch.reason[:200]})"
    return Recall(FETCHING, reason, fetch.pk, _retry_after(fetch, now))


def request(
    study_instance_uid: str, *, actor: str, via: str, actor_kind: str = events.USER, source_address: str = ""
) -> Recall:
    """What a client retrieving the study gets: HELD, else the recall under way (queued now if
    none was open), else UNAVAILABLE with the reason.  ``actor``: the user name or calling AE
    title (``actor_kind``); ``via``: how it asked (DICOMweb, C-MOVE, C-GET).  Queuing a recall is
    on the audit trail (DICOM Instances Transferred, PS3.15 A.5.3.7, action E: the engine asks
    the VNA for the study on the actor's behalf)."""
    now = timezone.now()
    requested_by = f"{actor} ({via})"
    with transaction.atomic():
        study = Study.objects.select_for_update().filter(study_instance_uid=study_instance_uid).first()
        if study is None:
            return Recall(UNAVAILABLE, "no such study here")
        if study.purged_at is None:
            return Recall(HELD)
        open_fetch = Prior.objects.filter(
            purpose=pr.RECALL, study_instance_uid=study_instance_uid, status__in=pr.OPEN
        ).first()
        if open_fetch is not None:
            return _fetching(open_fetch, now)
        vnas = archives_of(study)
        if not vnas:
            return Recall(
                UNAVAILABLE,
                "the study's files were purged here after archiving, and no enabled DICOM "
                "archive known to hold it can be asked for it",
            )
        vna = vnas[0]
        try:
            with transaction.atomic():
                fetch = Prior.objects.create(
                    purpose=pr.RECALL,
                    requested_procedure=None,
                    study_instance_uid=study_instance_uid,
                    patient_id=study.patient_id[:64],
                    issuer_of_patient_id=study.issuer_of_patient_id[:64],
                    study_date=study.study_date,
                    study_description=study.study_description,
                    modalities_in_study=study.modalities_in_study,
                    accession_number=study.accession_number,
                    source=vna,
                    status=pr.SCHEDULED,
                    next_attempt_at=now,
                    requested_by=requested_by[:150],
                )
        except IntegrityError:  # an open recall of the study after all (the unique constraint)
            open_fetch = Prior.objects.filter(
                purpose=pr.RECALL, study_instance_uid=study_instance_uid, status__in=pr.OPEN
            ).first()
            if open_fetch is None:
                raise
            return _fetching(open_fetch, now)
        if settings.AUDIT_ENABLED:
            trail.record(
                events.INSTANCES_TRANSFERRED,
                action=events.EXECUTE,
                actor=actor[:150] or "recall",
                actor_kind=actor_kind,
                source_address=source_address,
                destination=auditing.vna_address(vna),
                patients=[(study.patient_id, study.issuer_of_patient_id)] if study.patient_id else [],
                objects=[{"type": "study", "id": study_instance_uid, "detail": {"recall": fetch.pk}}],
                detail={"recall": fetch.pk, "via": via, "reason": "purged after archiving; fetched back on demand"},
            )
        priors.enqueue_on_commit(fetch.pk)
    log.info("recall queued", extra={"recall_id": fetch.pk, "destination": vna.name})
    return _fetching(fetch, now)


def state(study_instance_uid: str) -> Recall:
    """The study's state now, without queuing anything (HELD, FETCHING, or UNAVAILABLE when the
    last recall ended without bringing it back)."""
    now = timezone.now()
    study = Study.objects.filter(study_instance_uid=study_instance_uid).first()
    if study is None:
        return Recall(UNAVAILABLE, "no such study here")
    if study.purged_at is None:
        return Recall(HELD)
    last = Prior.objects.filter(purpose=pr.RECALL, study_instance_uid=study_instance_uid).order_by("-pk").first()
    if last is not None and last.status in pr.OPEN:
        return _fetching(last, now)
    return Recall(
        UNAVAILABLE,
        f"the fetch from the archive failed ({last.reason[:200]}); asking again starts a new one" if last else "purged",
    )


def wait(study_instance_uid: str, first: Recall, *, seconds: float, check=None, poll: float = 0.25) -> Recall:
    """Wait at most ``seconds`` for a recall under way to bring the study back; the last state.
    ``check(uid)`` reads the state (default ``state``; the DIMSE adapter runs it on its database
    threads so that none is held while this sleeps)."""
    check = check or state
    current = first
    deadline = time.monotonic() + seconds
    while current.state == FETCHING and time.monotonic() < deadline:
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
        current = check(study_instance_uid)
    if current.state == UNAVAILABLE and first.state == FETCHING:
        # It ended without bringing the study back: the client may ask again (a new recall).
        return Recall(FETCHING, current.reason, first.fetch_id, first.retry_after)
    return current
