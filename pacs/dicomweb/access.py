"""Who may use DICOMweb, and on which studies (deny by default).

A request is let in by one of three credentials, tried in this order:

1. a **signed study link**: ``?access_token=<signature>`` or ``Authorization: Bearer
   <signature>`` (``project.links.sign_study_link``), good for ``DICOMWEB_LINK_MAX_AGE_MINUTES``
   after it was signed, for the one study it names: every other study is refused (403) and
   searches see that study only;
2. an **API token**: ``Authorization: Token <key>``, the tokens of the reporting API (the
   worklist app registers its lookup with :func:`register_token_authenticator`, as the layers
   have it); the token's user must hold an image role;
3. a **session** of a signed-in user with an image role.

No credential: 401 with ``WWW-Authenticate``; a bad or expired one: 401; a user without an
image role: 403.  Each granted request is audited by the view that answers it, with the way in
(``via``) and, for a link, when the link was signed; a refused credential is a Security Alert.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from audit import trail
from project import links
from project.access import ADMINISTRATOR, RADIOLOGIST, RESIDENT, TECHNOLOGIST, declare_roles, has_role
from project.auditing import events
from project.auditing import web as web_audit

#: The roles that may see images.
IMAGE_ROLES = (RADIOLOGIST, RESIDENT, TECHNOLOGIST, ADMINISTRATOR)

SESSION = "session"
TOKEN = "token"
LINK = "link"

_token_authenticators: list[Callable[[str], object | None]] = []


def register_token_authenticator(authenticate: Callable[[str], object | None]) -> None:
    """``authenticate(key)`` returns the active user of an API token key, or None."""
    if authenticate not in _token_authenticators:
        _token_authenticators.append(authenticate)


@dataclass(frozen=True)
class Grant:
    """What a request may see: every study, or only ``study_uid`` (a signed link)."""

    actor: str
    via: str
    study_uid: str | None = None
    signed_at: float = 0.0

    def allows(self, study_uid: str | None) -> bool:
        """Whether a resource of ``study_uid`` may be answered (None: a search across studies,
        which a study-bound grant narrows to its study)."""
        return self.study_uid is None or study_uid is None or study_uid == self.study_uid

    def audit_detail(self) -> dict:
        detail = {"via": self.via}
        if self.via == LINK:
            detail["link_signed_at"] = int(self.signed_at)
        return detail


def problem(status: int, message: str, *, challenge: bool = False) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    if challenge:
        response["WWW-Authenticate"] = 'Token, Bearer realm="dicomweb"'
    return response


def _user_for_token(key: str):
    for authenticate in _token_authenticators:
        user = authenticate(key)
        if user is not None:
            return user
    return None


def grant_for(request) -> Grant | JsonResponse:
    """The request's grant, or the refusal to answer with."""
    header = request.headers.get("Authorization", "")
    scheme, _, credential = header.partition(" ")
    scheme, credential = scheme.lower(), credential.strip()
    link = request.GET.get(links.STUDY_LINK_PARAMETER, "") or (credential if scheme == "bearer" else "")
    if link:
        try:
            study, signed_at = links.study_of_link(link, max_age_seconds=settings.DICOMWEB_LINK_MAX_AGE_MINUTES * 60)
        except links.StudyLinkInvalid as exc:
            return problem(401, str(exc), challenge=True)
        return Grant(actor="study-link", via=LINK, study_uid=study, signed_at=signed_at)
    if scheme == "token" and credential:
        user = _user_for_token(credential)
        if user is None:
            return problem(401, "the API token is not valid", challenge=True)
        if not has_role(user, *IMAGE_ROLES):
            return problem(403, "this token's user has no role that may see images")
        return Grant(actor=user.get_username(), via=TOKEN)
    if header:
        return problem(401, "send Authorization: Token <key>, a study link, or sign in", challenge=True)
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return problem(401, "send Authorization: Token <key>, a study link, or sign in", challenge=True)
    if not has_role(user, *IMAGE_ROLES):
        return problem(403, "your account has no role that may see images")
    return Grant(actor=user.get_username(), via=SESSION)


def _audit_refusal(request, refusal: JsonResponse) -> None:
    """A credential refused (a bad or revoked token, a forged or expired link, a user without an
    image role): Security Alert, Use of Restricted Function (PS3.15 A.5.3.11), outcome 8.  A
    request that brought no credential at all is not recorded (every unauthenticated probe)."""
    if not settings.AUDIT_ENABLED or (refusal.status_code == 401 and not (
            request.headers.get("Authorization") or request.GET.get(links.STUDY_LINK_PARAMETER))):
        return
    user = getattr(request, "user", None)
    actor = user.get_username() if user is not None and user.is_authenticated else "anonymous"
    trail.record_soon(events.SECURITY_ALERT, event_type=events.USE_OF_RESTRICTED_FUNCTION, action=events.EXECUTE,
                      outcome=events.SERIOUS_FAILURE, actor=actor, actor_kind=events.USER,
                      source_address=web_audit.client_address(request),
                      detail={"path": request.path, "status": refusal.status_code,
                              "reason": json.loads(refusal.content)["error"]})


def dicomweb_view(view):
    """Authenticate (module docstring), then call ``view(request, grant, ...)``; CORS headers
    for the origins in ``DICOMWEB_CORS_ORIGINS``, and their preflight ``OPTIONS`` answered."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        origin = request.headers.get("Origin", "")
        allowed = origin if origin and origin in settings.DICOMWEB_CORS_ORIGINS else ""
        if request.method == "OPTIONS" and allowed:
            response = JsonResponse({}, status=204)
            response.content = b""
            response["Access-Control-Allow-Methods"] = "GET, OPTIONS"
            response["Access-Control-Allow-Headers"] = "Authorization, Accept, Cache-Control"
            response["Access-Control-Max-Age"] = "600"
        elif request.method not in ("GET", "HEAD"):
            response = problem(405, "DICOMweb here answers GET only")
            response["Allow"] = "GET"
        else:
            grant = grant_for(request)
            if isinstance(grant, JsonResponse):
                _audit_refusal(request, grant)
                response = grant
            else:
                response = view(request, grant, *args, **kwargs)
        if allowed:
            response["Access-Control-Allow-Origin"] = allowed
            response["Access-Control-Expose-Headers"] = "Warning, Content-Type, Retry-After"
            response["Vary"] = "Origin"
        return response

    wrapper = csrf_exempt(login_not_required(wrapper))
    wrapper.api_auth = "session-or-token"  # a signed study link too
    return declare_roles(wrapper, IMAGE_ROLES)
