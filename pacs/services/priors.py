"""Relevant priors of a new order (IHE SWF prefetch): find the patient's earlier studies, choose
the relevant ones, fetch those the engine does not hold before the exam is read.

1. ``on_procedures_ordered`` (the ``ris.signals.procedures_ordered`` receiver, in the order's
   transaction) records a ``PriorSearch`` per requested procedure and queues the task
   ``pacs.find_priors`` when it commits; the sweep queues again a search not finished
   (``pacs.services.prior_searches``: a broker down at order time loses none).
2. ``find_priors`` looks under every identifier the patient has had (its PatientID +
   IssuerOfPatientID pairs, those retired into it by an A40 merge included) in the engine's
   index and in every enabled VNA: by C-FIND (Study Root, STUDY level, PS3.4 C.4.1) in a DICOM
   one, by QIDO-RS (Search for Studies, PS3.18 10.6) in one that takes STOW-RS (``client``).
3. ``choose`` keeps the studies ``PRIORS_MATCH`` calls relevant (``pacs.services.prior_relevance``:
   a modality of the order's steps among ModalitiesInStudy, a body part in common, both, either,
   or any), not older than ``PRIORS_MAX_YEARS``, at most
   ``PRIORS_MAX_COUNT``, newest first; each becomes a ``Prior`` row: READY when the engine holds
   it whole (``held_whole``: as many instances as the VNA counts), else SCHEDULED and fetched by
   ``pacs.fetch_prior``.
4. ``run_fetch`` (one attempt of the task) leases the row and fetches the study from its VNA: a
   C-MOVE to the engine's own AE (PS3.4 C.4.2) from a DICOM VNA, a WADO-RS Retrieve Study
   (PS3.18 10.4) from a STOW-RS one, its instances stored as received ones either way; transient
   failures are retried with the transfers' backoff up to ``TRANSFER_MAX_ATTEMPTS``, permanent
   ones fail with the reason.  ``sweep`` re-queues rows no worker holds (the periodic imaging
   sweep).

A study fetched this way came from the archive: it is indexed like any received study and
marked as archived, so that it is neither routed back nor purged before ``ARCHIVE_RETENTION_DAYS``.

The same fetch path (``claim``, ``run_fetch``, ``_retry_later``, ``sweep``) brings back a study
purged after archiving that a client asked for (a recall, ``pacs.services.recall``): its rows are
``Prior`` rows with purpose ``recall`` and no requested procedure; once every file is back the
study is held again (``routing.archive.restore_purged``).
"""

from __future__ import annotations

import datetime as dt
import logging

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from pacs import auditing
from pacs.models import Study, VnaDestination
from pacs.models import images as im
from pacs.models import priors as pr
from pacs.models import transfers as tr
from pacs.models.priors import Prior
from pacs.services import prior_relevance, prior_searches
from pacs.services.routing import archive, destinations
from pacs.services.routing.schedule import next_attempt
from pacs.services.routing.sending import PermanentError, TransientError
from project.auditing import events
from project.celery import app
from project.delivery import leases
from project.delivery.sweep import publish_each
from ris.models import PatientIdentifier, PatientMerge, RequestedProcedure, ScheduledProcedureStep
from ris.services.transitions import transition

log = logging.getLogger("pacs.priors")

FIND_TASK = prior_searches.FIND_TASK
FETCH_TASK = "pacs.fetch_prior"


# ------------------------------------------------------------------------------------ new order
def on_procedures_ordered(requested_procedure_ids: list[int]) -> None:
    """In the order's transaction: record the searches for priors, queued once it commits (never
    for a rolled-back order; a broker that is down loses none: ``prior_searches.sweep``)."""
    if not settings.PRIORS_ENABLED:
        return
    prior_searches.queue(requested_procedure_ids)


def identities(patient_pk: int) -> list[tuple[str, str]]:
    """Every (PatientID, IssuerOfPatientID) the patient has had: its identifiers, current and
    retired into it by an A40 merge (MRG-1; they stay attached to the survivor), and the retired
    identifiers its merges name."""
    found = set(PatientIdentifier.objects.filter(patient_id=patient_pk)
                .values_list("id_number", "assigning_authority"))
    found |= set(PatientMerge.objects.filter(survivor_id=patient_pk, undone_at__isnull=True)
                 .values_list("retired_patient_id", "retired_issuer_of_patient_id"))
    return sorted(found)


def _date(value: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(value[:8], "%Y%m%d").date() if value else None
    except ValueError:
        return None


def local_candidates(rp: RequestedProcedure, ids: list[tuple[str, str]]) -> dict[str, dict]:
    """Studies of the index under one of the identifiers (a study that gave no issuer matches on
    PatientID alone) or matched to another order of the patient; not purged."""
    match = Q(requested_procedure__order__patient_id=rp.order.patient_id)
    for patient_id, issuer in ids:
        match |= Q(patient_id=patient_id) & (Q(issuer_of_patient_id=issuer) | Q(issuer_of_patient_id=""))
    out = {}
    for s in Study.objects.filter(match, purged_at__isnull=True).exclude(study_instance_uid=rp.study_instance_uid):
        out[s.study_instance_uid] = {
            "study_date": s.study_date, "modalities_in_study": s.modalities_in_study,
            "study_description": s.study_description, "accession_number": s.accession_number,
            "patient_id": s.patient_id, "issuer_of_patient_id": s.issuer_of_patient_id, "source": None,
            "body_parts": frozenset()}
    if prior_relevance.needs_body_part():
        for uid, parts in prior_relevance.local_body_parts(out).items():
            out[uid]["body_parts"] = parts
    return out


def client(vna: VnaDestination):
    """The module that asks this VNA and fetches from it, with the same functions and answers
    (``find_studies``, ``find_body_parts``, ``move_study``, ``RETRIEVE``): ``pacs.qr_scu``
    (C-FIND, C-MOVE) for a DICOM VNA, ``pacs.qr_dicomweb`` (QIDO-RS, WADO-RS) for a STOW-RS one,
    at the base URL its studies are sent to.  Imported on first use (pydicom, pynetdicom: the
    worker imports them before forking, ``pacs.tasks``)."""
    if vna.kind == tr.KIND_STOW:
        from pacs import qr_dicomweb

        return qr_dicomweb
    from pacs import qr_scu

    return qr_scu


def vna_candidates(rp: RequestedProcedure, ids: list[tuple[str, str]], *,
                   today: dt.date | None = None) -> tuple[dict[str, dict], list[str]]:
    """Every enabled VNA asked once per identifier (C-FIND, or QIDO-RS: ``client``) for the
    studies within ``PRIORS_MAX_YEARS`` (StudyDate range matching: older ones are never chosen:
    they need not cross the network nor count against a VNA's maximum number of matches); when
    ``PRIORS_MATCH`` looks at body parts, a SERIES-level query for the BodyPartExamined of the
    studies found within ``PRIORS_MAX_YEARS``.  Every query is on the audit trail, one record per
    VNA.  Returns the studies found and the failures (one per VNA that could not be asked)."""
    oldest = _oldest(today or timezone.localdate())
    out, errors = {}, []
    for vna in destinations.destinations():
        if vna.kind not in (tr.KIND_DICOM, tr.KIND_STOW):
            continue
        qr = client(vna)
        answers, failed = 0, False
        try:
            for patient_id, issuer in ids:
                for f in qr.find_studies(vna, patient_id, issuer, since=oldest):
                    answers += 1
                    if f.study_instance_uid == rp.study_instance_uid:
                        continue
                    out.setdefault(f.study_instance_uid, {
                        "study_date": _date(f.study_date), "modalities_in_study": f.modalities_in_study,
                        "study_description": f.study_description, "accession_number": f.accession_number,
                        "patient_id": f.patient_id, "issuer_of_patient_id": f.issuer_of_patient_id,
                        "source": vna.pk, "body_parts": frozenset(), "number_of_instances": f.number_of_instances})
            if prior_relevance.needs_body_part():
                recent = [uid for uid, c in out.items()
                          if c["source"] == vna.pk and c["study_date"] and c["study_date"] >= oldest]
                for uid, parts in qr.find_body_parts(vna, recent).items():
                    out[uid]["body_parts"] = parts
        except (TransientError, PermanentError) as exc:
            errors.append(str(exc))
            failed = True
            log.warning("priors: VNA query failed", extra={"destination": vna.name, "reason": str(exc)[:300]})
        if settings.AUDIT_ENABLED:
            auditing.priors_queried(vna, ids, answers=answers, since=oldest,
                                    outcome=events.SERIOUS_FAILURE if failed else events.SUCCESS)
    return out, errors


def _oldest(today: dt.date) -> dt.date:
    """The earliest StudyDate within ``PRIORS_MAX_YEARS``."""
    if today.month == 2 and today.day == 29:
        return today - dt.timedelta(days=365 * settings.PRIORS_MAX_YEARS)
    return today.replace(year=today.year - settings.PRIORS_MAX_YEARS)


def choose(rp: RequestedProcedure, candidates: dict[str, dict], *, today: dt.date) -> list[tuple[str, dict]]:
    """The relevant ones, newest first: ``PRIORS_MATCH`` (``pacs.services.prior_relevance``),
    ``PRIORS_MAX_YEARS``, ``PRIORS_MAX_COUNT``.  A study without StudyDate cannot be placed in time
    and is left out."""
    mode = settings.PRIORS_MATCH
    modalities = set(ScheduledProcedureStep.objects.filter(requested_procedure=rp).values_list("modality", flat=True))
    ordered_parts = prior_relevance.order_body_parts(rp) if prior_relevance.needs_body_part(mode) else frozenset()
    oldest = _oldest(today)
    chosen = []
    for uid, c in candidates.items():
        if c["study_date"] is None or c["study_date"] < oldest or c["study_date"] > today:
            continue
        parts = prior_relevance.with_description(c.get("body_parts") or frozenset(), c["study_description"])
        if not prior_relevance.relevant(mode, ordered_modalities=modalities, ordered_body_parts=ordered_parts,
                                        modalities_in_study=c["modalities_in_study"], body_parts=parts):
            continue
        chosen.append((uid, c))
    chosen.sort(key=lambda item: (item[1]["study_date"], item[0]), reverse=True)
    return chosen[:settings.PRIORS_MAX_COUNT]


def held_locally(study_instance_uid: str) -> bool:
    return Study.objects.filter(study_instance_uid=study_instance_uid, purged_at__isnull=True,
                                instances__isnull=False).exists()


def instances_held(study_instance_uid: str) -> int:
    """How many instances of the study the engine holds (0 when purged or unknown)."""
    return instances_held_of([study_instance_uid]).get(study_instance_uid, 0)


def instances_held_of(study_instance_uids) -> dict[str, int]:
    """How many instances of each study the engine holds, in one query (studies purged or not
    held are left out)."""
    from django.db.models import Count

    rows = (im.Instance.objects.filter(study__study_instance_uid__in=list(study_instance_uids),
                                       study__purged_at__isnull=True)
            .values("study__study_instance_uid").annotate(n=Count("pk")).order_by())
    return {r["study__study_instance_uid"]: r["n"] for r in rows}


def held_whole(study_instance_uid: str, number_of_instances: int | None) -> bool:
    """Whether the engine holds the study as the VNA does: at least the NumberOfStudyRelatedInstances
    (0020,1208) the VNA answered, or, that count not known (a study of the engine's own index, a
    VNA that left the optional key unanswered), any of it.  A study a modality also sent here in
    part is thus fetched from the VNA, not taken as held."""
    if number_of_instances is None:
        return held_locally(study_instance_uid)
    return instances_held(study_instance_uid) >= max(number_of_instances, 1)


def find_priors(requested_procedure_id: int, *, last_attempt: bool = True) -> list[int]:
    """Find, choose and record the priors of one requested procedure; queue the fetches.
    A VNA that could not be asked raises ``TransientError`` unless ``last_attempt`` (then the
    priors are chosen from what was found).  Returns the ``Prior`` keys written."""
    rp = RequestedProcedure.objects.select_related("order").filter(pk=requested_procedure_id).first()
    if rp is None:
        return []
    ids = identities(rp.order.patient_id)
    candidates = local_candidates(rp, ids)
    remote, errors = vna_candidates(rp, ids, today=timezone.localdate())
    if errors and not last_attempt:
        raise TransientError("; ".join(errors))
    for uid, c in remote.items():
        if uid in candidates:
            candidates[uid] = {**c, **{k: v for k, v in candidates[uid].items() if v}, "source": c["source"]}
        else:
            candidates[uid] = c
    written = []
    now = timezone.now()
    with transaction.atomic():
        for uid, c in choose(rp, candidates, today=timezone.localdate()):
            held = held_whole(uid, c.get("number_of_instances"))
            prior, created = Prior.objects.get_or_create(
                requested_procedure=rp, study_instance_uid=uid,
                defaults={"patient_id": c["patient_id"][:64], "issuer_of_patient_id": c["issuer_of_patient_id"][:64],
                          "study_date": c["study_date"], "study_description": c["study_description"],
                          "modalities_in_study": c["modalities_in_study"], "accession_number": c["accession_number"],
                          "number_of_instances": c.get("number_of_instances"),
                          "source_id": c["source"], "status": pr.READY if held else pr.SCHEDULED,
                          "next_attempt_at": now, "finished_at": now if held else None})
            if not created:
                continue
            written.append(prior.pk)
            if not held:
                enqueue_on_commit(prior.pk)
        prior_searches.finished(rp.pk)
    log.info("priors chosen", extra={"requested_procedure_id": rp.pk, "priors": len(written),
                                     "vna_failures": len(errors)})
    return written


# ------------------------------------------------------------------------------------ fetching
def publish(prior_id: int, countdown: float | None = None) -> None:
    app.send_task(FETCH_TASK, args=(prior_id,), countdown=countdown)


def enqueue_on_commit(prior_id: int, countdown: float | None = None) -> None:
    """Queue the fetch when the transaction commits; a broker that is down loses nothing (the sweep)."""
    transaction.on_commit(lambda: publish_each(
        [prior_id], lambda pk: publish(pk, countdown), log=log, event="could not queue prior fetch; the sweep will",
        key="prior_id"))


def claim(prior_id: int, *, now: dt.datetime | None = None) -> Prior | None:
    """Take the row for this worker, or None if it is not due, held, or settled."""
    now = now or timezone.now()
    with transaction.atomic():
        p = Prior.objects.select_for_update().filter(pk=prior_id).first()
        if p is None or p.status not in pr.OPEN:
            return None
        if p.status == pr.IN_PROGRESS and leases.held(p.lease_expires_at, now):
            return None
        if p.status in (pr.SCHEDULED, pr.RETRYING) and p.next_attempt_at and p.next_attempt_at > now + dt.timedelta(seconds=1):
            return None
        if p.attempts == 0 and held_whole(p.study_instance_uid, p.number_of_instances):
            # Held whole before any fetch of this row (received from a modality, fetched for
            # another order): ready.  After an attempt of its own, what is held may be only the part of
            # the study stored before instances were refused: the attempt runs again (instances
            # already stored come back as identical resends, stored as they are) and only a
            # fetch that ends without a refusal makes the prior READY.
            _ready(p, "held by the engine")
            return None
        if p.status != pr.IN_PROGRESS:
            transition(p, pr.IN_PROGRESS, entity="prior", cause=f"attempt {p.attempts + 1}", actor="worker")
        p.attempts += 1
        p.lease_expires_at = leases.until(now, settings.TRANSFER_LEASE_SECONDS)
        p.save(update_fields=["attempts", "lease_expires_at"])
        return p


def _ready(p: Prior, cause: str) -> None:
    p.reason = ""
    p.lease_expires_at = None
    p.finished_at = timezone.now()
    p.save(update_fields=["reason", "lease_expires_at", "finished_at"])
    transition(p, pr.READY, entity="prior", cause=cause, actor="priors")


def _mark_archived(study_instance_uid: str) -> None:
    """A study fetched from the VNA is in the archive: not routed back, purged after retention."""
    for study in Study.objects.select_for_update().filter(study_instance_uid=study_instance_uid,
                                                          status=im.RECEIVING, requested_procedure__isnull=True):
        now = timezone.now()
        study.status, study.completed_at, study.archived_at = im.ARCHIVED, now, now
        study.save(update_fields=["status", "completed_at", "archived_at", "updated_at"])


def run_fetch(prior_id: int) -> str:
    """One attempt (the Celery task's body): the prior fetched from its VNA (C-MOVE, or WADO-RS:
    ``client``).  Returns the status left."""
    p = claim(prior_id)
    if p is None:
        return "skipped"
    try:
        vna = VnaDestination.objects.filter(pk=p.source_id, enabled=True,
                                            kind__in=(tr.KIND_DICOM, tr.KIND_STOW)).first()
        if vna is None:
            raise PermanentError("the VNA it was found in is no longer an enabled destination")
        qr = client(vna)
        sent = qr.move_study(vna, p.study_instance_uid)
        with transaction.atomic():
            p = Prior.objects.select_for_update().get(pk=prior_id)
            archive.restore_purged(p.study_instance_uid)  # a purged study is held again once every file is back
            if not held_whole(p.study_instance_uid, p.number_of_instances):
                held = instances_held(p.study_instance_uid)
                expected = f" of the {p.number_of_instances} the VNA counts" if p.number_of_instances else ""
                raise TransientError(f"{qr.RETRIEVE} succeeded ({sent} sent) but the engine holds {held} "
                                     f"instances{expected}")
            _mark_archived(p.study_instance_uid)
            if p.status == pr.IN_PROGRESS:
                _ready(p, f"{qr.RETRIEVE} from {vna.name}: {sent} instances")
        return pr.READY
    except TransientError as exc:
        return _retry_later(prior_id, str(exc))
    except PermanentError as exc:
        return _fail(prior_id, f"permanent: {exc}")
    except Exception as exc:  # noqa: BLE001 - unknown: transient, bounded by the attempts
        log.exception("prior fetch failed", extra={"prior_id": prior_id})
        return _retry_later(prior_id, f"{type(exc).__name__}: {exc}")


def _retry_later(prior_id: int, reason: str) -> str:
    with transaction.atomic():
        p = Prior.objects.select_for_update().get(pk=prior_id)
        if p.status != pr.IN_PROGRESS:
            return p.status
        p.reason = reason[:2000]
        p.lease_expires_at = None
        retry = next_attempt(p.attempts)
        if retry is None:
            return _failed(p, f"gave up after {p.attempts} attempts: {reason}")
        p.next_attempt_at = retry.at
        p.save(update_fields=["reason", "lease_expires_at", "next_attempt_at"])
        transition(p, pr.RETRYING, entity="prior", cause=f"transient: {reason}"[:255], actor="priors")
        enqueue_on_commit(p.pk, countdown=retry.delay)
    log.warning("fetch from the VNA will be retried", extra={"prior_id": prior_id, "delay": round(retry.delay, 1)})
    return pr.RETRYING


def _failed(p: Prior, cause: str) -> str:
    p.reason = cause[:2000]
    p.lease_expires_at = None
    p.finished_at = timezone.now()
    p.save(update_fields=["reason", "lease_expires_at", "finished_at"])
    transition(p, pr.FAILED, entity="prior", cause=cause[:255], actor="priors")
    return pr.FAILED


def _fail(prior_id: int, reason: str) -> str:
    with transaction.atomic():
        p = Prior.objects.select_for_update().get(pk=prior_id)
        if p.status != pr.IN_PROGRESS:
            return p.status
        _failed(p, reason)
    log.error("prior fetch failed", extra={"prior_id": prior_id})
    return pr.FAILED


def sweep(*, now: dt.datetime | None = None, grace_seconds: float = 30.0) -> int:
    """Re-queue fetches no worker holds: due rows not picked up within a grace period, rows whose
    worker's lease ran out.  Returns how many rows it found."""
    now = now or timezone.now()
    due = Prior.objects.filter(status__in=[pr.SCHEDULED, pr.RETRYING],
                               next_attempt_at__lte=now - dt.timedelta(seconds=grace_seconds)).values_list("pk", flat=True)
    stale = Prior.objects.filter(leases.expired("lease_expires_at", now), status=pr.IN_PROGRESS).values_list("pk", flat=True)
    ids = sorted(set(due) | set(stale))
    publish_each(ids, publish, log=log, event="sweep could not queue prior fetch", key="prior_id")
    return len(ids)


def ready_study_uids(requested_procedure_id: int, limit: int) -> list[str]:
    """The Study Instance UIDs of a procedure's READY priors, newest first (the viewer opens them)."""
    from django.db.models import F

    rows = (Prior.objects.filter(requested_procedure_id=requested_procedure_id, status=pr.READY)
            .order_by(F("study_date").desc(nulls_last=True), "-pk"))
    return list(rows.values_list("study_instance_uid", flat=True)[:limit])


def ready_counts(requested_procedure_ids) -> dict[int, int]:
    """How many priors are READY per requested procedure (the reading worklist's column)."""
    from django.db.models import Count

    rows = (Prior.objects.filter(requested_procedure_id__in=list(requested_procedure_ids), status=pr.READY)
            .values("requested_procedure_id").annotate(n=Count("pk")))
    return {r["requested_procedure_id"]: r["n"] for r in rows}
