"""The audit trail of the web pages and the API: who looked at or changed which patient's data,
from where (DICOM PS3.15 A.5.3, IHE ATNA; the table of which page writes which event is in
README.md, "Audit trail").

- :class:`AuditActorMiddleware` makes the signed-in user the actor of every change a request
  causes (``project.auditing.actors.acting``), so the domain services record who changed what.
- :func:`read` records that a page or API answer showed patient data (``record_soon``: off the
  request's critical path; action R); :func:`query` that a list was answered.
- The admin's change list, change view, save and delete: ``ris.audited_admin.AuditedAdmin``.

The client address is ``project.https.client_address``: the connection's, or, behind proxies in
``WEB_TRUSTED_PROXIES``, the nearest address in ``X-Forwarded-For`` that none of them is.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings

from project import https
from project.auditing import events, recording
from project.auditing.actors import acting


def client_address(request) -> str:
    """Where the request came from, by the one rule of ``project.https.client_address`` (the sign-in
    lockouts count by the same address)."""
    return https.client_address(request)


def actor_name(request) -> str:
    user = getattr(request, "user", None)
    return user.get_username() if user is not None and user.is_authenticated else ""


class AuditActorMiddleware:
    """The signed-in user (from the client address) acts in every change the request makes."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        name = actor_name(request)
        if not name:
            return self.get_response(request)
        with acting(name, events.USER, source_address=client_address(request)):
            return self.get_response(request)


def read(request, event_id, *, patients: Iterable[tuple[str, str]] = (), objects: Iterable[dict] = (),
         detail: dict | None = None, actor: str = "", outcome: int = events.SUCCESS) -> None:
    """Record that ``request`` was answered with the data of ``patients`` (action R).

    ``actor``: who, when the request's user is not the one (the token API's account);
    ``outcome``: PS3.15 A.5.1 EventOutcomeIndicator, a failure when the read was attempted and
    not answered.
    """
    if not settings.AUDIT_ENABLED:
        return
    pairs = list(dict.fromkeys((str(p), str(i or "")) for p, i in patients if p))
    page = getattr(getattr(request, "resolver_match", None), "view_name", "") or request.path
    recording.record_soon(event_id, action=events.READ, outcome=outcome, actor=actor or actor_name(request) or "anonymous",
                      actor_kind=events.USER, source_address=client_address(request), patients=pairs,
                      objects=list(objects), detail={"page": page, **(detail or {})})


def query(request, *, patients: Iterable[tuple[str, str]], criteria: dict, shown: int, actor: str = "",
          outcome: int = events.SUCCESS) -> None:
    """A list answered: a Query record (PS3.15 A.5.3.10) with what was asked and who was listed;
    a query that was run and not answered (cancelled) is recorded too, with its failure ``outcome``
    and nobody listed."""
    asked = {k: v for k, v in criteria.items() if v not in ("", None, [], ())}
    read(request, events.QUERY, patients=patients, actor=actor, outcome=outcome,
         objects=[{"type": "query", "id": request.path, "detail": asked}], detail={"shown": shown})
