"""Who may open what: roles, and default deny for every view.

Roles are Django groups (created by migration ``pacs.0002_roles``):

- ``radiologist``: reads, claims, signs preliminary and final reports and addenda
- ``resident``: drafts reports and signs preliminary ones
- ``technologist``: sees the reading worklist, cannot report
- ``administrator``: the operator pages, templates, forced releases, replays, the audit page
- ``privacy_officer``: the audit page (``/audit/``) and nothing else: who saw which patient
  (migration ``pacs.0010_privacy_officer_role``)

A superuser counts as an administrator.  Every view must declare who may open it with
``@roles(...)`` (or ``@public`` for login, health and static); ``DefaultDenyMiddleware``
answers 403 for a view that declares nothing, so a new endpoint without a declared
permission is closed, not open.  The Django admin keeps its own staff check.
"""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import PermissionDenied

RADIOLOGIST = "radiologist"
RESIDENT = "resident"
TECHNOLOGIST = "technologist"
ADMINISTRATOR = "administrator"
PRIVACY_OFFICER = "privacy_officer"
ROLES = (RADIOLOGIST, RESIDENT, TECHNOLOGIST, ADMINISTRATOR, PRIVACY_OFFICER)

_ATTR = "allowed_roles"


def user_roles(user) -> set[str]:
    if not user.is_authenticated:
        return set()
    cached = getattr(user, "_pacs_roles", None)
    if cached is None:
        cached = remember_roles(user, user.groups.values_list("name", flat=True))
    return cached


def remember_roles(user, group_names) -> set[str]:
    """The roles of ``user`` from the names of its groups (read by the caller, e.g. in the same
    statement as the user), kept on the user object for this request."""
    roles = set(group_names) & set(ROLES)
    if user.is_superuser:
        roles.add(ADMINISTRATOR)
    user._pacs_roles = roles
    return roles


def has_role(user, *allowed: str) -> bool:
    return bool(user_roles(user) & set(allowed))


def roles(*allowed: str):
    """Declare the roles that may open a view (function-based); others get 403."""
    unknown = set(allowed) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {unknown}")

    def decorate(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not has_role(request.user, *allowed):
                raise PermissionDenied
            return view(request, *args, **kwargs)

        setattr(wrapper, _ATTR, frozenset(allowed))
        return wrapper

    return decorate


def public(view):
    """Reachable without login (login page, health, metrics scraped by the monitoring host)."""
    view = login_not_required(view)
    setattr(view, _ATTR, "public")
    return view


def declare_roles(view, allowed: tuple[str, ...]):
    """Declare roles on a view whose own decorator authenticates and checks them (token API)."""
    unknown = set(allowed) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {unknown}")
    setattr(view, _ATTR, frozenset(allowed))
    return view


def declared_roles(view) -> frozenset[str] | str | None:
    return getattr(view, _ATTR, None)


class DefaultDenyMiddleware:
    """403 for any view outside the admin that declares no roles (default deny)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        match = getattr(request, "resolver_match", None)
        if match is not None and match.app_name == "admin":
            return None
        if declared_roles(view_func) is None and getattr(view_func, "__module__", "").split(".")[0] not in {
            "django"
        }:
            raise PermissionDenied
        return None
