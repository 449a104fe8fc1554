"""Role matrix of the whole project: every URL pattern x anonymous and every role.

The test walks Django's URL resolver (every app, the admin included), builds a concrete URL for
each pattern and requests it as anonymous and as a user of each role, then asserts the
declared outcome:

- ``@public`` views: reachable without login;
- ``@roles(...)`` views: anonymous -> redirect to the login page; a role outside the declared
  set -> 403; a declared role -> neither 403 nor a login redirect nor a server error;
- token views (the dictation API): 401 without a token, even with a session; with a token of
  a declared role -> allowed; with a token of another role -> 403;
- session-or-token views (DICOMweb): 401 for anonymous (a machine endpoint: no login redirect);
  a session or a token of a declared role -> allowed; of another role -> 403;
- the Django admin: staff only (everyone else is sent to the admin login).

A pattern whose view declares nothing fails the test (default deny: a new URL must say who
may open it).  ``EXPECTED`` repeats the declarations of the pages known when this test was
written, so a changed declaration on them is noticed as well.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings
from django.urls import path, resolve

from project.access import (
    ADMINISTRATOR,
    PRIVACY_OFFICER,
    RADIOLOGIST,
    RESIDENT,
    TECHNOLOGIST,
    roles,
)
from tests.support.urls import ADMIN_SITE, PUBLIC, sample_regex, sample_route, view_declaration, walk

# Every role that works with studies: all but the privacy officer, who sees the audit page only.
CLINICAL = frozenset({RADIOLOGIST, RESIDENT, TECHNOLOGIST, ADMINISTRATOR})
AUDITORS = frozenset({PRIVACY_OFFICER, ADMINISTRATOR})
READERS = frozenset({RADIOLOGIST, RESIDENT})
ADMIN_ONLY = frozenset({ADMINISTRATOR})

# Declarations of the pages known when this test was written: url name -> outcome.
EXPECTED: dict[str, object] = {
    "health": PUBLIC,
    "login": PUBLIC,
    "logout": PUBLIC,
    "admin:login": PUBLIC,
    "admin:logout": PUBLIC,
    "worklist:list": CLINICAL,
    "worklist:save_filter": READERS,
    "worklist:delete_filter": READERS,
    "worklist:study": CLINICAL,
    "worklist:claim": READERS,
    "worklist:autosave": READERS,
    "worklist:sign": READERS,
    "worklist:release": frozenset({RADIOLOGIST, RESIDENT, ADMINISTRATOR}),
    "worklist:templates": ADMIN_ONLY,
    "worklist:template_new": ADMIN_ONLY,
    "worklist:template_edit": ADMIN_ONLY,
    # Images: reconciliation of unmatched studies, VNA transfers.
    "imaging:reconciliation": frozenset({TECHNOLOGIST, ADMINISTRATOR}),
    "imaging:reconcile_study": frozenset({TECHNOLOGIST, ADMINISTRATOR}),
    "imaging:link_study": frozenset({TECHNOLOGIST, ADMINISTRATOR}),
    "imaging:new_order": frozenset({TECHNOLOGIST, ADMINISTRATOR}),
    "imaging:transfers": frozenset({TECHNOLOGIST, ADMINISTRATOR}),
    "imaging:retry_transfer": ADMIN_ONLY,
    "imaging:cancel_transfer": ADMIN_ONLY,
    # Outbound ORU operator page.
    "interfaces:outbound": ADMIN_ONLY,
    "interfaces:outbound_detail": ADMIN_ONLY,
    "interfaces:outbound_retry": ADMIN_ONLY,
    "interfaces:outbound_cancel": ADMIN_ONLY,
    "interfaces:charges": ADMIN_ONLY,
    # Prometheus metrics: public, restricted by address or token in the view.
    "monitoring:metrics": PUBLIC,
    "metrics": PUBLIC,
    # Operator's console, journey and replays.
    "monitoring:console": ADMIN_ONLY,
    "monitoring:journey": ADMIN_ONLY,
    "monitoring:replays": ADMIN_ONLY,
    "monitoring:replay_inbound": ADMIN_ONLY,
    "monitoring:replay_outbound": ADMIN_ONLY,
    # The audit page: privacy officers and administrators, no one else.
    "audit:search": AUDITORS,
    "audit:record": AUDITORS,
    "audit:who_saw": AUDITORS,
    "audit:export": AUDITORS,
    ("token", "worklist:api_create_report"): READERS,
    ("token", "worklist:api_report"): READERS,
    ("token", "worklist:api_sign"): READERS,
    ("token", "worklist:api_addendum"): READERS,
    # DICOMweb: every role that works with studies, by session or API token.
    **{("session-or-token", f"dicomweb:{name}"): CLINICAL for name in (
        "root", "wado", "search_studies", "search_all_series", "search_all_instances", "search_series",
        "search_study_instances", "search_instances", "study", "series", "instance", "study_metadata",
        "series_metadata", "instance_metadata", "frames", "bulkdata", "rendered", "frame_rendered")},
}

def _request(client: Client, url: str, **headers):
    r = client.get(url, **headers)
    if r.status_code == 405:  # a POST-only endpoint: the role gate must still answer
        r = client.post(url, **headers)
    return r


def _to_login(r, login="/accounts/login/") -> bool:
    return r.status_code == 302 and r["Location"].startswith(login)


def matrix_failures(people, superuser, *, expected=EXPECTED) -> list[str]:
    """Request every routed URL as anonymous and each role; return what breaks the declarations."""
    patterns = list(walk())
    names = {name for _, name, _ in patterns}
    failures = [f"{key} is no longer routed" for key in expected
                if (key[1] if isinstance(key, tuple) else key) not in names]
    for url, name, view in patterns:
        match = resolve(url.split("?")[0])
        declaration = view_declaration(name, view)
        if declaration is None:
            failures.append(f"{url} ({name}): the view declares no roles (@roles / @public)")
            continue
        if match.func is not view and name.split(":")[0] != "admin":
            failures.append(f"{url} ({name}): the sample URL resolves to another view")
            continue
        expected_key = (declaration[0], name) if isinstance(declaration, tuple) else name
        if expected_key in expected:
            want = expected[expected_key]
            got = declaration[1] if isinstance(declaration, tuple) else declaration
            if want != got:
                failures.append(f"{url} ({name}): declared {got}, the matrix says {want}")
        failures.extend(_check(url, name, declaration, people, superuser))
    return failures


@pytest.mark.django_db
def test_every_url_declares_and_enforces_its_roles(people):
    assert len(list(walk())) > 20
    superuser = User.objects.create_superuser("rbac_super", password="x-Rbac-Pass-1")
    failures = matrix_failures(people, superuser)
    assert not failures, "\n".join(failures)


def _check(url, name, declaration, people, superuser) -> list[str]:
    out = []
    anon = Client(raise_request_exception=False)
    r = _request(anon, url)
    if declaration == ADMIN_SITE:
        if not (_to_login(r) or _to_login(r, "/admin/login/")):
            out.append(f"{url} ({name}) anonymous: {r.status_code}, expected a login page")
        for role, (user, _key) in people.items():
            c = Client(raise_request_exception=False)
            c.force_login(user)
            r = _request(c, url)
            if not _to_login(r, "/admin/login/") and r.status_code != 404:
                out.append(f"{url} ({name}) {role} (not staff): {r.status_code}, expected the admin login")
        c = Client(raise_request_exception=False)
        c.force_login(superuser)
        r = _request(c, url)
        if _to_login(r, "/admin/login/") or r.status_code >= 500:
            out.append(f"{url} ({name}) superuser: {r.status_code}")
        return out
    if declaration == PUBLIC:
        if _to_login(r) or r.status_code in (401, 403) or r.status_code >= 500:
            out.append(f"{url} ({name}) anonymous: {r.status_code} on a public page")
        return out
    if isinstance(declaration, tuple) and declaration[0] == "session-or-token":  # DICOMweb
        allowed = declaration[1]
        if r.status_code != 401:
            out.append(f"{url} ({name}) anonymous: {r.status_code}, expected 401")
        for role, (user, key) in people.items():
            c = Client(raise_request_exception=False)
            c.force_login(user)
            by_session = _request(c, url)
            by_token = _request(Client(raise_request_exception=False), url, HTTP_AUTHORIZATION=f"Token {key}")
            for how, r in (("session", by_session), ("token", by_token)):
                if role in allowed and (r.status_code in (401, 403) or r.status_code >= 500):
                    out.append(f"{url} ({name}) {role} {how}: {r.status_code}, expected allowed")
                if role not in allowed and r.status_code != 403:
                    out.append(f"{url} ({name}) {role} {how}: {r.status_code}, expected 403")
        return out
    if isinstance(declaration, tuple):  # token API
        allowed = declaration[1]
        if r.status_code != 401:
            out.append(f"{url} ({name}) anonymous: {r.status_code}, expected 401")
        for role, (user, key) in people.items():
            c = Client(raise_request_exception=False)
            c.force_login(user)
            r = _request(c, url)
            if r.status_code != 401:
                out.append(f"{url} ({name}) {role} with a session but no token: {r.status_code}, expected 401")
            r = _request(Client(raise_request_exception=False), url, HTTP_AUTHORIZATION=f"Token {key}")
            if role in allowed and (r.status_code in (401, 403) or r.status_code >= 500):
                out.append(f"{url} ({name}) {role} token: {r.status_code}, expected allowed")
            if role not in allowed and r.status_code != 403:
                out.append(f"{url} ({name}) {role} token: {r.status_code}, expected 403")
        return out
    if not _to_login(r):
        out.append(f"{url} ({name}) anonymous: {r.status_code}, expected the login page")
    for role, (user, _key) in people.items():
        c = Client(raise_request_exception=False)
        c.force_login(user)
        r = _request(c, url)
        if role in declaration:
            if r.status_code in (401, 403) or _to_login(r) or r.status_code >= 500:
                out.append(f"{url} ({name}) {role}: {r.status_code}, expected allowed")
        elif r.status_code != 403:
            out.append(f"{url} ({name}) {role}: {r.status_code}, expected 403")
    return out


def test_sample_urls_for_regex_patterns():
    assert sample_regex(r"^(?P<app_label>auth|ris)/$") == "auth/"
    assert sample_regex(r"(?P<url>.*)$") == "x1"
    assert sample_route("reading/studies/<int:requested_procedure_id>/") == "reading/studies/1/"


# A URL configuration with one view that declares nothing and one that declares wrongly.
def _undeclared(request):
    from django.http import HttpResponse

    return HttpResponse("open to anyone?")


@roles(RADIOLOGIST)
def _declared_for_radiologists(request):
    from django.http import HttpResponse

    return HttpResponse("radiologists only")


urlpatterns = [
    path("undeclared/", _undeclared, name="undeclared"),
    path("declared/", _declared_for_radiologists, name="declared"),
]


@pytest.mark.django_db
@override_settings(ROOT_URLCONF="tests.test_rbac")
def test_a_new_url_without_declaration_fails_the_matrix(people):
    superuser = User.objects.create_superuser("rbac_super", password="x-Rbac-Pass-1")
    failures = matrix_failures(people, superuser, expected={"declared": frozenset({RADIOLOGIST})})
    assert failures == ["/undeclared/ (undeclared): the view declares no roles (@roles / @public)"]
    # ... and the middleware denies it meanwhile (default deny), even to a logged-in user.
    c = Client()
    c.force_login(people[ADMINISTRATOR][0])
    assert c.get("/undeclared/").status_code == 403
    # A declaration that differs from the matrix is reported too.
    failures = matrix_failures(people, superuser, expected={"declared": frozenset({RESIDENT})})
    assert any("the matrix says" in f for f in failures)
