"""Reporting API for dictation systems: token-authenticated JSON.

``Authorization: Token <key>`` (a key from ``manage.py create_api_token``); the token's user
must hold a reporting role.  The endpoints call the same domain services as the browser
(``ris.services.reports``): the same signing rules, the same claims check, the same ORU^R01.
No session, no CSRF cookie: the token is the credential (a machine endpoint).

Answers: 200/201 JSON; 400 malformed JSON or fields; 401 no or bad token; 403 role or claim
refuses; 404 unknown accession number; 409 a FINAL signature of a study whose order the EHR
cancelled or discontinued (``placer_status`` in the report's JSON) without ``"confirm_cancelled":
true``; 422 a report rule refuses (e.g. final already signed).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from functools import wraps

from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import JsonResponse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.views.decorators.csrf import csrf_exempt

from project.access import RADIOLOGIST, RESIDENT, declare_roles, has_role, remember_roles
from project.auditing import events
from project.auditing import web as web_audit
from project.auditing.actors import acting
from ris import auditing as ris_auditing
from ris.errors import DomainError, UnknownKey
from ris.models import Report
from ris.services import reports
from worklist.models import ApiToken

API_ROLES = (RADIOLOGIST, RESIDENT)


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


# The token's last use is noted to the minute: a write per request would make every read (a
# viewer fetching a study's frames, a QIDO-RS search) wait on a commit for a figure that the
# administrator reads to find stale tokens.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


@functools.cache
def _token_statement() -> str:
    """The token lookup as one statement: the token's user (every column, as the ORM loads it),
    the token's id and last use, and the user's group names (one row per group), so that a
    request's credential and its roles cost one round trip.  Names come from the models."""
    user_model = get_user_model()
    qn = connection.ops.quote_name
    meta = user_model._meta
    columns = ", ".join(f"u.{qn(f.column)}" for f in meta.concrete_fields)
    groups = meta.get_field("groups")
    group = groups.related_model._meta
    return (
        f"SELECT {columns}, t.{qn('id')} AS token_id, t.{qn('last_used_at')} AS token_last_used_at, "
        f"g.{qn('name')} AS group_name "
        f"FROM {qn(ApiToken._meta.db_table)} t "
        f"JOIN {qn(meta.db_table)} u ON u.{qn(meta.pk.column)} = t.{qn('user_id')} "
        f"LEFT JOIN {qn(groups.remote_field.through._meta.db_table)} ug "
        f"ON ug.{qn(groups.m2m_column_name())} = u.{qn(meta.pk.column)} "
        f"LEFT JOIN {qn(group.db_table)} g ON g.{qn(group.pk.column)} = ug.{qn(groups.m2m_reverse_name())} "
        f"WHERE t.{qn('key_sha256')} = %s AND t.{qn('revoked_at')} IS NULL AND u.{qn('is_active')}"
    )


def _aware(value) -> dt.datetime | None:
    """A timestamp read outside the ORM: SQLite gives text, PostgreSQL an aware datetime."""
    if isinstance(value, str):
        value = parse_datetime(value)
    if value is not None and timezone.is_naive(value):
        value = timezone.make_aware(value, dt.UTC)
    return value


def user_for_token(key: str):
    """The active user of an unrevoked token key (its last use noted, to the minute), or None;
    the user's roles are read in the same statement (``project.access.remember_roles``).
    DICOMweb (``pacs.dicomweb.access``) takes the same tokens: ``WorklistConfig.ready`` registers
    this."""
    key = key.strip()
    if not key:
        return None
    rows = list(get_user_model().objects.raw(_token_statement(), [ApiToken.digest(key)]))
    if not rows:
        return None
    user = rows[0]
    remember_roles(user, [row.group_name for row in rows if row.group_name is not None])
    last_used_at = _aware(user.token_last_used_at)
    now = timezone.now()
    if last_used_at is None or now - last_used_at >= LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=user.token_id).update(last_used_at=now)
    return user


def token_roles(*allowed: str):
    """Authenticate ``Authorization: Token <key>`` and require one of ``allowed`` roles."""

    def decorate(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            header = request.headers.get("Authorization", "")
            scheme, _, key = header.partition(" ")
            if scheme.lower() != "token" or not key.strip():
                return _auth_required()
            user = user_for_token(key)
            if user is None:
                return _auth_required()
            request.user = user
            if not has_role(user, *allowed):
                return _error(403, "this token's user has no reporting role")
            # The token's user acts in the changes the call makes (the session middleware saw none).
            with acting(user.get_username(), events.USER,
                                     source_address=web_audit.client_address(request)):
                return view(request, *args, **kwargs)

        wrapper = csrf_exempt(login_not_required(wrapper))
        wrapper.api_auth = "token"
        return declare_roles(wrapper, allowed)

    return decorate


def _auth_required() -> JsonResponse:
    response = _error(401, "send Authorization: Token <key>")
    response["WWW-Authenticate"] = "Token"
    return response


def _body(request) -> dict:
    try:
        data = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise _BadRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _BadRequest("the body must be a JSON object")
    return data


class _BadRequest(Exception):
    pass


def _text(data: dict, name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise _BadRequest(f"{name} must be a string")
    return value


def _datetime(data: dict, name: str) -> dt.datetime | None:
    raw = data.get(name)
    if raw in (None, ""):
        return None
    try:
        value = dt.datetime.fromisoformat(str(raw))
    except ValueError:
        raise _BadRequest(f"{name} must be an ISO 8601 date and time") from None
    return timezone.make_aware(value) if timezone.is_naive(value) else value


def _version_json(v) -> dict:
    return {
        "version_number": v.version_number, "kind": v.kind, "result_status": v.result_status,
        "findings": v.findings, "impression": v.impression, "addendum": v.addendum,
        "signed": v.is_signed, "signer_name": v.signer_name,
        "signed_at": v.signed_at.isoformat() if v.signed_at else None,
        "critical_result": v.critical_result, "critical_communicated_to": v.critical_communicated_to,
        "critical_communicated_at": v.critical_communicated_at.isoformat() if v.critical_communicated_at else None,
    }


def _placer_json(rp) -> dict | None:
    """The reading worklist's flag: the order placer's CA / DC (ORC-1), or None."""
    if not rp.placer_status:
        return None
    return {"status": rp.placer_status, "flag": rp.placer_flag,
            "at": rp.placer_status_at.isoformat() if rp.placer_status_at else None,
            "message": rp.placer_status_cause}


def _report_json(rp) -> dict:
    report = Report.objects.filter(requested_procedure=rp).first()
    return {
        "accession_number": rp.accession_number,
        "study_instance_uid": rp.study_instance_uid,
        "status": report.status if report else None,
        "placer_status": _placer_json(rp),
        "versions": [_version_json(v) for v in reports.history(rp.pk)],
    }


def _call(fn):
    """Translate the domain's answers into HTTP statuses (one place for every endpoint)."""
    try:
        return fn()
    except _BadRequest as exc:
        return _error(400, str(exc))
    except UnknownKey as exc:
        return _error(404, str(exc))
    except reports.ReportPermissionDenied as exc:
        return _error(403, str(exc))
    except reports.PlacerStatusNotConfirmed as exc:
        return JsonResponse({"error": str(exc), "flag": exc.placer_flag, "placer_status": exc.placer_status,
                             "confirm_with": {"confirm_cancelled": True}}, status=409)
    except DomainError as exc:
        return _error(422, str(exc))


def _flag(data: dict, name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise _BadRequest(f"{name} must be true or false")
    return value


def _sign_or_save(request, rp, data: dict, kind: str | None):
    text = {"findings": _text(data, "findings"), "impression": _text(data, "impression"),
            "addendum": _text(data, "addendum")}
    confirm_cancelled = _flag(data, "confirm_cancelled")
    if kind is None:
        version = reports.save_draft(rp.pk, request.user, source="api", **text)
        return JsonResponse({"report": _report_json(rp), "version": _version_json(version)}, status=201)
    version = reports.sign(
        rp.pk, request.user, kind, source="api", critical_result=bool(data.get("critical_result")),
        critical_communicated_to=str(data.get("critical_communicated_to") or ""),
        critical_communicated_at=_datetime(data, "critical_communicated_at"), confirm_cancelled=confirm_cancelled,
        **text,
    )
    return JsonResponse({"report": _report_json(rp), "version": _version_json(version)}, status=201)


@token_roles(*API_ROLES)
def create_report(request):
    """POST /api/v1/reports/ {accession_number, findings, impression, sign?: PRELIMINARY|FINAL, critical...,
    confirm_cancelled?}.

    Without ``sign`` the text is saved as the open draft; with it the report is signed at once.
    """
    if request.method != "POST":
        return _error(405, "POST")

    def run():
        data = _body(request)
        accession = data.get("accession_number")
        if not isinstance(accession, str) or not accession.strip():
            raise _BadRequest("accession_number is required")
        kind = data.get("sign")
        if kind is not None and kind not in ("PRELIMINARY", "FINAL"):
            raise _BadRequest("sign must be PRELIMINARY or FINAL (use .../addenda/ for an addendum)")
        rp = reports.procedure_by_accession(accession.strip())
        return _sign_or_save(request, rp, data, kind)

    return _call(run)


@token_roles(*API_ROLES)
def report_detail(request, accession_number: str):
    """GET /api/v1/reports/<accession>/: the report's status and every version."""
    if request.method != "GET":
        return _error(405, "GET")

    def run():
        rp = reports.procedure_by_accession(accession_number)
        answer = JsonResponse(_report_json(rp))
        # Procedure Record R (PS3.15 A.5.3.15): the report of this study was read.
        web_audit.read(request, events.PROCEDURE_RECORD, patients=ris_auditing.patients_of(rp),
                      objects=ris_auditing.objects_of(rp))
        return answer

    return _call(run)


@token_roles(*API_ROLES)
def sign_report(request, accession_number: str):
    """POST /api/v1/reports/<accession>/sign/ {kind: PRELIMINARY|FINAL, findings?, impression?, critical...,
    confirm_cancelled?}."""
    if request.method != "POST":
        return _error(405, "POST")

    def run():
        data = _body(request)
        kind = data.get("kind")
        if kind not in ("PRELIMINARY", "FINAL"):
            raise _BadRequest("kind must be PRELIMINARY or FINAL")
        return _sign_or_save(request, reports.procedure_by_accession(accession_number), data, kind)

    return _call(run)


@token_roles(*API_ROLES)
def add_addendum(request, accession_number: str):
    """POST /api/v1/reports/<accession>/addenda/ {addendum, critical...}: a signed addendum (radiologists)."""
    if request.method != "POST":
        return _error(405, "POST")

    def run():
        data = _body(request)
        return _sign_or_save(request, reports.procedure_by_accession(accession_number),
                             {**data, "findings": None, "impression": None}, "ADDENDUM")

    return _call(run)
