"""Domain services of the reading worklist: ready studies, claims, saved filters.

Views, the dictation API and the image pipeline call these with plain values; the rules live
here (the report rules in ``ris.services.reports``).  Claims follow one rule: at most one
active claim per study, enforced by the partial unique index ``one_active_claim_per_study``
(an INSERT that loses the race gets an IntegrityError; no check-then-write).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from project.access import ADMINISTRATOR, RADIOLOGIST, RESIDENT, has_role
from project.auditing import events
from ris import auditing, states
from ris.errors import DomainError
from ris.models import Report, RequestedProcedure
from worklist.models import READ_STATUSES, UNREAD, ReadingClaim, ReadingItem, SavedFilter, name_key

log = logging.getLogger(__name__)

# Roles that may claim a study (to report on it).
READER_ROLES = (RADIOLOGIST, RESIDENT)


class ReadingError(DomainError):
    """A reading worklist rule refused the request (message readable by the user)."""


class NotReadyForReading(ReadingError):
    pass


class ClaimDenied(ReadingError):
    pass


# --- Ready studies -------------------------------------------------------------------------------

def _copied_columns(rp: RequestedProcedure) -> dict:
    patient = rp.order.patient
    ident = patient.primary_identifier
    step = rp.steps.order_by("pk").first()
    return {
        "priority_rank": states.PRIORITY_RANK.get(rp.requested_procedure_priority, 9),
        "requested_procedure_priority": rp.requested_procedure_priority,
        "modality": step.modality if step else "",
        "patient_name": patient.patient_name,
        "patient_name_key": name_key(patient.patient_name),
        "patient_id": ident.id_number if ident else "",
        "issuer_of_patient_id": ident.assigning_authority if ident else "",
        "accession_number": rp.accession_number,
        "requested_procedure_description": rp.requested_procedure_description or rp.procedure_code_meaning,
        "study_instance_uid": rp.study_instance_uid,
        "placer_status": rp.placer_status,
        "placer_status_at": rp.placer_status_at,
    }


def mark_ready_for_reading(requested_procedure_id: int, *, ready_at: dt.datetime | None = None) -> ReadingItem:
    """Put a study (one requested procedure = one accession) on the reading worklist.

    Idempotent: called again for the same study it keeps the first ``ready_at`` (time waiting
    does not restart when a late image arrives) and refreshes the copied columns.  Called by
    the image pipeline when a study is complete and matched (``pacs.signals.study_completed``;
    IHE Scheduled Workflow: the study is ready to read once acquired and matched).
    """
    rp = RequestedProcedure.objects.select_related("order__patient").get(pk=requested_procedure_id)
    columns = _copied_columns(rp)
    with transaction.atomic():
        # A report dictated before the images were complete (dictation API) keeps its status.
        report_status = Report.objects.filter(requested_procedure=rp).values_list("status", flat=True).first()
        report_status = report_status or UNREAD
        item, created = ReadingItem.objects.get_or_create(
            requested_procedure=rp, defaults={**columns, "ready_at": ready_at or timezone.now(),
                                              "report_status": report_status,
                                              "is_read": report_status in READ_STATUSES}
        )
        if not created:
            changed = [k for k, v in columns.items() if getattr(item, k) != v]
            if changed:
                for k in changed:
                    setattr(item, k, columns[k])
                item.save(update_fields=[*changed, "updated_at"])
    if created:
        log.info("study ready for reading", extra={"requested_procedure_id": rp.pk})
    return item


def refresh_reading_item(requested_procedure_id: int) -> None:
    """Re-copy priority, modality, patient name/ID, accession, placer status after the order or
    patient changed.

    No-op for a study that is not on the reading worklist.  Call it after an HL7 update
    (priority change, CA / DC, A08 name change, A40 merge) so that the list shows current values.
    """
    item = ReadingItem.objects.filter(requested_procedure_id=requested_procedure_id).first()
    if item is not None:
        mark_ready_for_reading(requested_procedure_id)


def refresh_reading_items_for_patient(patient_id: int) -> int:
    """``refresh_reading_item`` for every study of a patient (after A08 / A40); returns the count."""
    ids = list(
        ReadingItem.objects.filter(requested_procedure__order__patient_id=patient_id).values_list(
            "requested_procedure_id", flat=True
        )
    )
    for rp_id in ids:
        mark_ready_for_reading(rp_id)
    return len(ids)


def set_report_status(requested_procedure_id: int, report_status: str) -> None:
    """Mirror the report status on the list row (``worklist.receivers``, in the report's transaction)."""
    ReadingItem.objects.filter(requested_procedure_id=requested_procedure_id).exclude(
        report_status=report_status
    ).update(report_status=report_status, is_read=report_status in READ_STATUSES, updated_at=timezone.now())


# --- Claims --------------------------------------------------------------------------------------

def claim_timeout() -> dt.timedelta:
    return dt.timedelta(minutes=settings.READING_CLAIM_TIMEOUT_MINUTES)


@dataclass(frozen=True)
class ClaimResult:
    """Outcome of ``claim_study``: ``won`` is True when ``claim`` belongs to the asking user."""

    won: bool
    claim: ReadingClaim


def _expire_idle(requested_procedure_id: int | None = None, *, now: dt.datetime | None = None) -> int:
    now = now or timezone.now()
    qs = ReadingClaim.objects.filter(released_at__isnull=True, last_activity_at__lt=now - claim_timeout())
    if requested_procedure_id is not None:
        qs = qs.filter(requested_procedure_id=requested_procedure_id)
    return qs.update(released_at=now, release_reason=ReadingClaim.EXPIRED)


def expire_idle_claims(*, now: dt.datetime | None = None) -> int:
    """Close every active claim idle longer than READING_CLAIM_TIMEOUT_MINUTES; returns the count."""
    return _expire_idle(None, now=now)


def active_claim(requested_procedure_id: int) -> ReadingClaim | None:
    """The active, unexpired claim of a study (None when nobody holds it)."""
    claim = (
        ReadingClaim.objects.select_related("user")
        .filter(requested_procedure_id=requested_procedure_id, released_at__isnull=True)
        .first()
    )
    if claim is not None and claim.last_activity_at < timezone.now() - claim_timeout():
        return None
    return claim


def claim_study(requested_procedure_id: int, user) -> ClaimResult:
    """Claim a study for reporting (the study page's "Start reading" button, a POST).

    Returns ``ClaimResult(won=True)`` with the user's claim (a new one, or the one the user
    already held, refreshed), or ``won=False`` with the other holder's claim.  The partial
    unique index decides a race: the losing INSERT fails and the winner's claim is returned.
    """
    if not has_role(user, *READER_ROLES):
        raise ClaimDenied("only radiologists and residents can claim a study")
    if not ReadingItem.objects.filter(requested_procedure_id=requested_procedure_id).exists():
        raise NotReadyForReading("this study is not on the reading worklist")
    now = timezone.now()
    for _attempt in range(3):
        with transaction.atomic():
            _expire_idle(requested_procedure_id, now=now)
            try:
                with transaction.atomic():
                    claim = ReadingClaim.objects.create(
                        requested_procedure_id=requested_procedure_id, user=user, claimed_at=now, last_activity_at=now
                    )
                _audit_claim(requested_procedure_id, user, "claimed")
                return ClaimResult(True, claim)
            except IntegrityError:
                pass
            holder = (
                ReadingClaim.objects.select_related("user")
                .filter(requested_procedure_id=requested_procedure_id, released_at__isnull=True)
                .first()
            )
        if holder is None:  # released between our INSERT and SELECT: try again
            continue
        if holder.user_id == user.pk:
            ReadingClaim.objects.filter(pk=holder.pk).update(last_activity_at=now)
            holder.last_activity_at = now
            return ClaimResult(True, holder)
        return ClaimResult(False, holder)
    raise ClaimDenied("the claim of this study changed too often; try again")


def touch_claim(requested_procedure_id: int, user) -> bool:
    """Record activity (autosave, open) on the user's active claim; False if the user holds none."""
    now = timezone.now()
    return bool(
        ReadingClaim.objects.filter(
            requested_procedure_id=requested_procedure_id, user=user, released_at__isnull=True,
            last_activity_at__gte=now - claim_timeout(),
        ).update(last_activity_at=now)
    )


def holds_claim(requested_procedure_id: int, user) -> bool:
    claim = active_claim(requested_procedure_id)
    return claim is not None and claim.user_id == user.pk


def release_claim(requested_procedure_id: int, user, *, force: bool = False, reason: str | None = None) -> bool:
    """Release the active claim of a study.

    The holder releases their own claim; ``force=True`` (administrators only) releases anyone's.
    Returns False when there was no active claim to release.
    """
    if force and not has_role(user, ADMINISTRATOR):
        raise ClaimDenied("only an administrator can force the release of a claim")
    qs = ReadingClaim.objects.filter(requested_procedure_id=requested_procedure_id, released_at__isnull=True)
    if not force:
        qs = qs.filter(user=user)
    reason = reason or (ReadingClaim.FORCED if force else ReadingClaim.RELEASED)
    with transaction.atomic():
        released = bool(qs.update(released_at=timezone.now(), release_reason=reason, released_by=user))
        if released:
            _audit_claim(requested_procedure_id, user, "released", reason=reason)
    return released


def _audit_claim(requested_procedure_id: int, user, what: str, **detail) -> None:
    """Procedure Record U (PS3.15 A.5.3.15): who took or gave back the reading of a study."""
    item = (ReadingItem.objects.filter(requested_procedure_id=requested_procedure_id)
            .values("patient_id", "issuer_of_patient_id", "accession_number", "study_instance_uid").first())
    if item is None:
        return
    auditing.change(events.PROCEDURE_RECORD, events.UPDATE,
                    patients=[(item["patient_id"], item["issuer_of_patient_id"])],
                    objects=[{"type": "accession", "id": item["accession_number"]},
                             {"type": "study", "id": item["study_instance_uid"]}],
                    detail={"claim": what, **detail}, actor=user.get_username())


def ensure_not_claimed_by_other(requested_procedure_id: int, user) -> None:
    """Refuse to change a report while another user holds the study's active claim."""
    claim = active_claim(requested_procedure_id)
    if claim is not None and claim.user_id != user.pk:
        raise ClaimDenied(f"this study is claimed by {claim.user.get_full_name() or claim.user.get_username()}")


# --- Saved filters -------------------------------------------------------------------------------

def save_filter(user, name: str, query: str) -> SavedFilter:
    """Save (or overwrite) a named filter of the reading worklist for this user."""
    name = name.strip()[:80]
    if not name:
        raise ReadingError("a saved filter needs a name")
    obj, _ = SavedFilter.objects.update_or_create(user=user, name=name, defaults={"query": query[:1000]})
    return obj


def delete_filter(user, filter_id: int) -> bool:
    return bool(SavedFilter.objects.filter(user=user, pk=filter_id).delete()[0])


__all__ = [
    "UNREAD",
    "ClaimDenied",
    "ClaimResult",
    "NotReadyForReading",
    "ReadingError",
    "active_claim",
    "claim_study",
    "delete_filter",
    "ensure_not_claimed_by_other",
    "expire_idle_claims",
    "holds_claim",
    "mark_ready_for_reading",
    "refresh_reading_item",
    "refresh_reading_items_for_patient",
    "release_claim",
    "save_filter",
    "set_report_status",
    "touch_claim",
]
