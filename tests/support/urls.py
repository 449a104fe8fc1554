"""Every URL of the project, walked from Django's resolver with a sample value for each
parameter, and what each view declares about who may open it (project.access)."""

from __future__ import annotations

import re

from django.urls import get_resolver
from django.urls.resolvers import RegexPattern, RoutePattern

from project.access import declared_roles

PUBLIC = "public"
ADMIN_SITE = "admin-site"

_ROUTE_SAMPLES = {"int": "1", "str": "x1", "slug": "x1", "path": "x1", "uuid": "00000000-0000-0000-0000-000000000001"}


def sample_route(route: str) -> str:
    return re.sub(r"<(?:(\w+):)?\w+>", lambda m: _ROUTE_SAMPLES.get(m.group(1) or "str", "1"), route)


def sample_regex(regex: str) -> str:
    def group(m):
        body = m.group(1)
        alternatives = body.split("|")
        if all(re.fullmatch(r"[\w.-]+", a) for a in alternatives):
            return alternatives[0]
        return "1" if ("\\d" in body or "0-9" in body) else "x1"

    text = re.sub(r"\(\?P<\w+>((?:[^()]|\([^()]*\))*)\)", group, regex)
    return text.replace("^", "").replace("$", "").replace("\\", "")


def walk(patterns=None, prefix="", namespace=""):
    """Yield (url, name, view) for every leaf pattern of the project."""
    for p in patterns if patterns is not None else get_resolver().url_patterns:
        piece = sample_regex(p.pattern._regex) if isinstance(p.pattern, RegexPattern) else sample_route(
            str(p.pattern) if isinstance(p.pattern, RoutePattern) else str(p.pattern))
        if hasattr(p, "url_patterns"):
            ns = p.namespace or ""
            yield from walk(p.url_patterns, prefix + piece, f"{namespace}:{ns}".strip(":") if ns else namespace)
        else:
            name = f"{namespace}:{p.name}" if namespace and p.name else (p.name or f"{namespace}:<unnamed>")
            yield "/" + prefix + piece, name, p.callback


def view_declaration(name: str, view):
    """Who may open the view: PUBLIC, ADMIN_SITE, its roles, (\"token\", roles) for the dictation API,
    (\"session-or-token\", roles) for DICOMweb, or None when it declares nothing (project.access)."""
    if name in ("admin:login", "admin:logout"):  # the admin's own login form, like /accounts/login/
        return PUBLIC
    if name.split(":")[0] == "admin":
        return ADMIN_SITE
    declared = declared_roles(view)
    if declared is None:
        return None
    if getattr(view, "api_auth", None) == "token":
        return ("token", declared)
    if getattr(view, "api_auth", None) == "session-or-token":
        return ("session-or-token", declared)
    return declared
