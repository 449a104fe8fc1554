"""Report rules: drafts, signatures, addenda, critical results (one place for browser and API).

Who may do what (the roles of project.access):

- draft (autosave): radiologist or resident;
- sign PRELIMINARY (OBR-25 ``P``): radiologist or resident, while the report is not final;
- sign FINAL (``F``): radiologist only, while the report is not final;
- sign an ADDENDUM (``C``): radiologist only, after the final signature.  The addendum is a new
  version that repeats the signed findings and impression and adds its own text: the signed
  versions are never changed;
- sign FINAL a study whose order the placer cancelled or discontinued (its placer status, ORC-1
  CA / DC): only with the signer's explicit confirmation, recorded in the signature's audit record.

Nobody may change a report while another user holds the study's active reading claim: the
reading worklist refuses through ``ris.signals.report_changing``.  Every signature, its
``Report`` status change (through ``ris.services.transitions.transition``) and what the
receivers of ``ris.signals.report_signed`` write (the reading worklist's status and claim, the
outbound ORU^R01 rows) are committed in one transaction: a signed report is never left without
its ORU, and an ORU is never sent for a signature that rolled back.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from project.access import RADIOLOGIST, RESIDENT, has_role
from project.auditing import events
from ris import auditing
from ris.errors import DomainError, UnknownKey
from ris.models import Report, ReportTemplate, ReportVersion, RequestedProcedure
from ris.models.reports import (
    KIND_ADDENDUM,
    KIND_FINAL,
    KIND_PRELIMINARY,
    KINDS,
    REPORT_ADDENDED,
    REPORT_DRAFT,
    REPORT_FINAL,
    REPORT_PRELIMINARY,
    RESULT_STATUS,
)
from ris.services.transitions import transition
from ris.signals import report_changing, report_draft_saved, report_signed

log = logging.getLogger(__name__)

# Who may sign which kind.
SIGNING_ROLES = {
    KIND_PRELIMINARY: (RADIOLOGIST, RESIDENT),
    KIND_FINAL: (RADIOLOGIST,),
    KIND_ADDENDUM: (RADIOLOGIST,),
}
DRAFTING_ROLES = (RADIOLOGIST, RESIDENT)
# Report status each kind of signature may start from, and the status it leads to.
_SIGNABLE_FROM = {
    KIND_PRELIMINARY: (REPORT_DRAFT, REPORT_PRELIMINARY),
    KIND_FINAL: (REPORT_DRAFT, REPORT_PRELIMINARY),
    KIND_ADDENDUM: (REPORT_FINAL, REPORT_ADDENDED),
}
_STATUS_AFTER = {KIND_PRELIMINARY: REPORT_PRELIMINARY, KIND_FINAL: REPORT_FINAL, KIND_ADDENDUM: REPORT_ADDENDED}
MAX_TEXT = 100_000


class ReportError(DomainError):
    """A report rule refused the request; the message is meant for the user."""


class ReportPermissionDenied(ReportError):
    pass


class PlacerStatusNotConfirmed(ReportError):
    """A final signature of a study whose order the placer cancelled or discontinued (ORC-1 CA /
    DC) was asked for without the signer's confirmation that the flag was seen."""

    def __init__(self, rp: RequestedProcedure):
        self.placer_status = rp.placer_status
        self.placer_flag = rp.placer_flag
        super().__init__(f"{rp.placer_flag}: signing final needs your confirmation that you saw this flag")


def signer_name(user) -> str:
    """OBR-32 / XCN style name of the signer: ``FAMILY^GIVEN`` (else the user name)."""
    family, given = (user.last_name or "").strip(), (user.first_name or "").strip()
    if family:
        return f"{family}^{given}" if given else family
    return user.get_username()


def _clean(text: str | None, what: str) -> str | None:
    if text is None:
        return None
    text = str(text).replace("\r\n", "\n")
    if len(text) > MAX_TEXT:
        raise ReportError(f"{what} is longer than {MAX_TEXT} characters")
    return text


def _procedure(requested_procedure_id: int) -> RequestedProcedure:
    try:
        return RequestedProcedure.objects.get(pk=requested_procedure_id)
    except RequestedProcedure.DoesNotExist:
        raise UnknownKey(f"no requested procedure {requested_procedure_id}") from None


def procedure_by_accession(accession_number: str) -> RequestedProcedure:
    """The study with this AccessionNumber (0008,0050) / OBR-18, or UnknownKey."""
    rp = RequestedProcedure.objects.filter(accession_number=accession_number).first()
    if rp is None:
        raise UnknownKey(f"no study with accession number {accession_number!r}")
    return rp


def template_for(rp: RequestedProcedure) -> ReportTemplate | None:
    """The active template for this procedure code, else its modality, else the default one."""
    active = ReportTemplate.objects.filter(active=True)
    if rp.procedure_code_value:
        found = active.filter(procedure_code_value=rp.procedure_code_value).first()
        if found:
            return found
    step = rp.steps.order_by("pk").first()
    if step is not None:
        found = active.filter(procedure_code_value="", modality=step.modality).first()
        if found:
            return found
    return active.filter(procedure_code_value="", modality="").first()


def _locked_report(rp: RequestedProcedure, user) -> Report:
    """The study's report, created if missing, locked FOR UPDATE (call inside a transaction)."""
    report, _ = Report.objects.get_or_create(requested_procedure=rp, defaults={"created_by": user})
    return Report.objects.select_for_update().get(pk=report.pk)


def _latest_signed(report: Report) -> ReportVersion | None:
    return report.versions.filter(signed_at__isnull=False).order_by("-version_number").first()


def _open_draft(report: Report, user, kind: str) -> ReportVersion:
    """The report's unsigned draft, or a new one starting from the last signed text or the template."""
    draft = report.versions.filter(signed_at__isnull=True).first()
    if draft is not None:
        return draft
    previous = _latest_signed(report)
    if previous is not None:
        findings, impression = previous.findings, previous.impression
    else:
        tpl = template_for(report.requested_procedure)
        findings, impression = (tpl.findings, tpl.impression) if tpl else ("", "")
    number = (report.versions.aggregate(n=Max("version_number"))["n"] or 0) + 1
    return ReportVersion.objects.create(
        report=report, version_number=number, kind=kind, findings=findings, impression=impression, author=user
    )


def _check_claim(rp: RequestedProcedure, user) -> None:
    """Ask the receivers of ``report_changing`` whether ``user`` may change the report now."""
    try:
        report_changing.send(sender=Report, requested_procedure_id=rp.pk, user=user)
    except DomainError as exc:
        raise ReportPermissionDenied(str(exc)) from None


def open_draft(requested_procedure_id: int, user) -> ReportVersion | None:
    """The draft the editor shows (created from the template if there is none).

    Returns None when the report is final or addended and no addendum draft exists (the editor
    then offers an addendum).
    """
    if not has_role(user, *DRAFTING_ROLES):
        raise ReportPermissionDenied("only radiologists and residents write reports")
    rp = _procedure(requested_procedure_id)
    with transaction.atomic():
        report = _locked_report(rp, user)
        draft = report.versions.filter(signed_at__isnull=True).first()
        if draft is None and report.status in (REPORT_FINAL, REPORT_ADDENDED):
            return None
        if draft is None:
            _check_claim(rp, user)
            draft = _open_draft(report, user, KIND_PRELIMINARY if has_role(user, RESIDENT) and not has_role(
                user, RADIOLOGIST) else KIND_FINAL)
        return draft


def save_draft(requested_procedure_id: int, user, *, findings: str | None = None, impression: str | None = None,
               addendum: str | None = None, source: str = "browser") -> ReportVersion:
    """Autosave: write the text into the report's open draft (creating it if needed).

    After the final signature a draft can only be an addendum (radiologists only): its
    findings and impression stay those of the signed report; only ``addendum`` changes.
    """
    if not has_role(user, *DRAFTING_ROLES):
        raise ReportPermissionDenied("only radiologists and residents write reports")
    findings, impression, addendum = (_clean(findings, "findings"), _clean(impression, "impression"),
                                      _clean(addendum, "addendum"))
    rp = _procedure(requested_procedure_id)
    with transaction.atomic():
        report = _locked_report(rp, user)
        _check_claim(rp, user)
        final = report.status in (REPORT_FINAL, REPORT_ADDENDED)
        if final and not has_role(user, *SIGNING_ROLES[KIND_ADDENDUM]):
            raise ReportPermissionDenied("the report is final; only a radiologist can add an addendum")
        draft = _open_draft(report, user, KIND_ADDENDUM if final else KIND_FINAL)
        if final:
            draft.kind = KIND_ADDENDUM
            if addendum is not None:
                draft.addendum = addendum
        else:
            if findings is not None:
                draft.findings = findings
            if impression is not None:
                draft.impression = impression
        changed = [name for name, value in (("findings", findings), ("impression", impression),
                                            ("addendum", addendum)) if value is not None]
        draft.author = user
        draft.source = source
        draft.save()
        # Procedure Record U (PS3.15 A.5.3.15): the draft's text changed, by whom; the fields
        # named, never their text (that is the report itself, not its audit).
        auditing.change(events.PROCEDURE_RECORD, events.UPDATE,
                        patients=auditing.patient_ids(rp.order.patient_id), objects=auditing.objects_of(rp)
                        + [{"type": "report", "id": str(report.pk), "detail": f"draft version {draft.version_number}"}],
                        detail={"draft": draft.kind, "version": draft.version_number, "source": source,
                                "fields": changed}, actor=user.get_username())
        report_draft_saved.send(sender=Report, requested_procedure_id=rp.pk, report_status=report.status)
    return draft


def sign(requested_procedure_id: int, user, kind: str, *, findings: str | None = None,
         impression: str | None = None, addendum: str | None = None, critical_result: bool = False,
         critical_communicated_to: str = "", critical_communicated_at: dt.datetime | None = None,
         source: str = "browser", confirm_cancelled: bool = False) -> ReportVersion:
    """Sign the study's report as ``kind`` (PRELIMINARY, FINAL or ADDENDUM); returns the signed version.

    Text given here replaces the draft's text before signing (the dictation API sends it in one
    call).  A critical result needs whom it was communicated to; the time defaults to now.
    The signature, the report status change, the reading worklist status and the outbound
    ORU^R01 rows commit together.

    A FINAL signature of a study whose order the placer cancelled or discontinued (its placer
    status, ORC-1 CA / DC) needs ``confirm_cancelled``: without it ``PlacerStatusNotConfirmed``;
    with it the confirmation is part of the signature's audit record.
    """
    if kind not in KINDS:
        raise ReportError(f"unknown kind of signature {kind!r} (one of {', '.join(KINDS)})")
    if not has_role(user, *SIGNING_ROLES[kind]):
        raise ReportPermissionDenied(
            f"signing {kind.lower()} needs the role {' or '.join(SIGNING_ROLES[kind])}"
        )
    critical_communicated_to = (critical_communicated_to or "").strip()[:200]
    if critical_result and not critical_communicated_to:
        raise ReportError("a critical result needs whom it was communicated to")
    findings, impression, addendum = (_clean(findings, "findings"), _clean(impression, "impression"),
                                      _clean(addendum, "addendum"))
    rp = _procedure(requested_procedure_id)
    now = timezone.now()
    with transaction.atomic():
        # Locked: a CA / DC applied at the same moment is either seen here or waits for the signature.
        rp = RequestedProcedure.objects.select_for_update().get(pk=rp.pk)
        report = _locked_report(rp, user)
        _check_claim(rp, user)
        if report.status not in _SIGNABLE_FROM[kind]:
            if kind == KIND_ADDENDUM:
                raise ReportError("an addendum can only be added to a final report")
            raise ReportError(f"the report is {report.status.lower()}; add an addendum instead")
        confirmed = {}
        if kind == KIND_FINAL and rp.placer_status:
            if not confirm_cancelled:
                raise PlacerStatusNotConfirmed(rp)
            confirmed = {"confirmed_placer_status": rp.placer_status, "placer_flag": rp.placer_flag,
                         "placer_status_cause": rp.placer_status_cause}
        draft = _open_draft(report, user, kind)
        draft.kind = kind
        if kind == KIND_ADDENDUM:
            signed = _latest_signed(report)
            draft.findings, draft.impression = signed.findings, signed.impression
            if addendum is not None:
                draft.addendum = addendum
            if not draft.addendum.strip():
                raise ReportError("an addendum needs its text")
        else:
            if findings is not None:
                draft.findings = findings
            if impression is not None:
                draft.impression = impression
            draft.addendum = ""
            if not (draft.findings.strip() or draft.impression.strip()):
                raise ReportError("a report needs findings or an impression")
        draft.result_status = RESULT_STATUS[kind]
        draft.signed_by = user
        draft.author = user
        draft.signer_name = signer_name(user)
        draft.signed_at = now
        draft.critical_result = bool(critical_result)
        draft.critical_communicated_to = critical_communicated_to if critical_result else ""
        draft.critical_communicated_at = (critical_communicated_at or now) if critical_result else None
        draft.source = source
        draft.save()
        transition(report, _STATUS_AFTER[kind], entity="report",
                   cause=f"{kind.lower()} signature of version {draft.version_number} ({source})",
                   actor=user.get_username())
        # Procedure Record (PS3.15 A.5.3.15), in the signature's transaction: C for the first
        # signed version, U for every later one (final after preliminary, addendum).
        auditing.change(events.PROCEDURE_RECORD, events.CREATE if draft.version_number == 1 else events.UPDATE,
                        patients=auditing.patient_ids(rp.order.patient_id), objects=auditing.objects_of(rp)
                        + [{"type": "report", "id": str(report.pk), "detail": f"version {draft.version_number}"}],
                        detail={"signed": kind, "version": draft.version_number, "source": source,
                                "report_status": report.status, **confirmed}, actor=user.get_username())
        report_signed.send(sender=Report, report_version=draft, requested_procedure_id=rp.pk,
                           report_status=report.status, user=user)
    log.info("report signed", extra={"report_id": report.pk, "version": draft.version_number, "kind": kind})
    return draft


def history(requested_procedure_id: int) -> list[ReportVersion]:
    """Every version of the study's report, oldest first (the open draft last)."""
    return list(
        ReportVersion.objects.filter(report__requested_procedure_id=requested_procedure_id)
        .select_related("signed_by")
        .order_by("version_number")
    )
