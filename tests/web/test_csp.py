"""The Content-Security-Policy header (project.csp) on every page that renders HTML: each routed URL
as the users who may open it, the login page, the admin, a 404 and a 500; and the templates
carry nothing the policy would block (no inline script, handler or style)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import path

from project.access import public
from project.csp import HEADER, POLICY, VIEWER_POLICY
from tests.support.urls import ADMIN_SITE, PUBLIC, view_declaration, walk

ROOT = Path(__file__).resolve().parents[2]
DIRECTIVES = ("default-src 'self'", "object-src 'none'", "base-uri 'self'", "form-action 'self'",
              "frame-ancestors 'none'")


def _directives(value: str) -> set[str]:
    return {d.strip() for d in value.split(";") if d.strip()}


def test_the_policy_names_every_directive_and_nothing_unsafe():
    assert _directives(POLICY) == set(DIRECTIVES)
    assert "unsafe" not in POLICY and "*" not in POLICY


def test_the_viewer_policy_loosens_only_what_the_viewer_needs():
    viewer = _directives(VIEWER_POLICY)
    assert set(DIRECTIVES) <= viewer
    assert "script-src 'self' 'wasm-unsafe-eval'" in viewer  # WebAssembly codecs; no eval, no inline script
    assert "unsafe-eval'" not in VIEWER_POLICY.replace("'wasm-unsafe-eval'", "") and "*" not in VIEWER_POLICY
    assert [d for d in viewer if "'unsafe-inline'" in d] == ["style-src 'self' 'unsafe-inline'"]


#: Routes under a policy of their own (the built-in viewer, /viewer/).
OWN_POLICY = {"worklist:viewer": VIEWER_POLICY}


def _html(response) -> bool:
    return response.get("Content-Type", "").startswith("text/html")


@pytest.mark.django_db
def test_every_html_page_carries_the_policy(people):  # noqa: F811 - the fixture
    superuser = User.objects.create_superuser("csp_super", password="x-Csp-Pass-1")
    checked, missing = [], []
    for url, name, view in walk():
        declaration = view_declaration(name, view)
        clients = [Client(raise_request_exception=False)]
        if declaration == ADMIN_SITE:
            clients[0].force_login(superuser)
        elif declaration != PUBLIC and not isinstance(declaration, tuple):
            for user, _key in people.values():
                c = Client(raise_request_exception=False)
                c.force_login(user)
                clients.append(c)
        for client in clients:
            response = client.get(url)
            if response.status_code == 405:
                continue  # POST-only: answers no page
            if _html(response) or response.status_code in (302, 403, 404):
                checked.append(url)
                # (its redirects to the login, refusals and 404s carry the strict one)
                own = name in OWN_POLICY and response.status_code == 200
                expected = _directives(OWN_POLICY[name]) if own else set(DIRECTIVES)
                if _directives(response.get(HEADER, "")) != expected:
                    missing.append(f"{url} ({name}) {response.status_code}: {response.get(HEADER)!r}")
    assert len(set(checked)) > 20
    assert not missing, "\n".join(missing)


@pytest.mark.django_db
def test_login_admin_and_not_found_pages_carry_the_policy():
    anonymous = Client()
    for url in ("/accounts/login/", "/admin/login/", "/no-such-page/?q=ZZ"):
        response = anonymous.get(url)
        assert response.status_code in (200, 302, 404) and response[HEADER] == POLICY, url
    assert _html(anonymous.get("/accounts/login/"))


def _broken(request):
    raise RuntimeError("a view that fails")


urlpatterns = [path("broken/", public(_broken))]


@pytest.mark.django_db
def test_the_server_error_page_carries_the_policy(settings):
    settings.ROOT_URLCONF = __name__
    settings.DEBUG = False
    response = Client(raise_request_exception=False).get("/broken/")
    assert response.status_code == 500 and response[HEADER] == POLICY


def test_nothing_inline_is_left_in_the_templates():
    # The project's own templates: not those of installed packages (.venv, .venv-runtime, ...).
    templates = [p for p in ROOT.glob("**/templates/**/*.html")
                 if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)]
    assert len(templates) > 10
    inline = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>|<style\b|\sstyle=|\son[a-z]+=|javascript:", re.I)
    offenders = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in templates for m in inline.finditer(p.read_text())]
    python = [p for p in ROOT.glob("*/**/*.py")
              if not any(part.startswith(".") for part in p.relative_to(ROOT).parts) and "tests" not in p.parts]
    offenders += [f"{p.relative_to(ROOT)}: style=" for p in python if re.search(r"<[a-z]+ [^>]*style=", p.read_text())]
    assert not offenders, offenders
