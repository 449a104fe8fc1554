"""The dictation API: token authentication and the same report rules as the browser."""

from __future__ import annotations

import json
import secrets

import pytest
from django.core.management import call_command

from project.access import RADIOLOGIST, RESIDENT, TECHNOLOGIST
from ris.models import Report, ReportVersion
from tests.factories import reading as f
from worklist import services
from worklist.models import ApiToken


def _token(user) -> str:
    key = secrets.token_urlsafe(24)
    ApiToken.objects.create(user=user, name="test dictation", key_sha256=ApiToken.digest(key))
    return key


def _post(client, url, body, key):
    return client.post(url, data=json.dumps(body) if not isinstance(body, bytes) else body,
                       content_type="application/json", HTTP_AUTHORIZATION=f"Token {key}")


@pytest.fixture
def rad_key(db):
    return _token(f.user("rad", RADIOLOGIST, first_name="Rita", last_name="Reader"))


@pytest.mark.django_db
def test_create_and_sign_final_then_addendum(client, rad_key):
    rp = f.study()
    r = _post(client, "/api/v1/reports/", {"accession_number": rp.accession_number, "findings": "Dictated.",
                                          "impression": "Normal.", "sign": "FINAL"}, rad_key)
    assert r.status_code == 201, r.content
    body = r.json()
    assert body["version"]["result_status"] == "F" and body["version"]["signer_name"] == "Reader^Rita"
    assert body["report"]["status"] == "FINAL"
    r = _post(client, f"/api/v1/reports/{rp.accession_number}/addenda/", {"addendum": "Late comparison."}, rad_key)
    assert r.status_code == 201 and r.json()["version"]["result_status"] == "C"
    r = client.get(f"/api/v1/reports/{rp.accession_number}/", HTTP_AUTHORIZATION=f"Token {rad_key}")
    assert [v["kind"] for v in r.json()["versions"]] == ["FINAL", "ADDENDUM"]
    assert r.json()["versions"][0]["findings"] == "Dictated."
    assert ReportVersion.objects.get(kind="FINAL").source == "api"


@pytest.mark.django_db
def test_draft_then_sign_preliminary_by_resident(client):
    key = _token(f.user("res", RESIDENT))
    rp = f.study()
    r = _post(client, "/api/v1/reports/", {"accession_number": rp.accession_number, "findings": "Draft."}, key)
    assert r.status_code == 201 and not r.json()["version"]["signed"]
    r = _post(client, f"/api/v1/reports/{rp.accession_number}/sign/", {"kind": "FINAL"}, key)
    assert r.status_code == 403
    r = _post(client, f"/api/v1/reports/{rp.accession_number}/sign/", {"kind": "PRELIMINARY"}, key)
    assert r.status_code == 201 and r.json()["version"]["findings"] == "Draft."
    assert Report.objects.get().status == "PRELIMINARY"


@pytest.mark.django_db
def test_authentication_and_bad_input(client, rad_key):
    rp = f.study()
    url = "/api/v1/reports/"
    good = {"accession_number": rp.accession_number, "findings": "x", "sign": "FINAL"}
    assert client.post(url, data=json.dumps(good), content_type="application/json").status_code == 401
    assert _post(client, url, good, "wrong-key").status_code == 401
    r = client.post(url, data=json.dumps(good), content_type="application/json", HTTP_AUTHORIZATION="Bearer x")
    assert r.status_code == 401 and r["WWW-Authenticate"] == "Token"
    revoked = _token(f.user("rad_old", RADIOLOGIST))
    ApiToken.objects.filter(key_sha256=ApiToken.digest(revoked)).update(revoked_at="2026-01-01T00:00Z")
    assert _post(client, url, good, revoked).status_code == 401
    assert _post(client, url, good, _token(f.user("tech", TECHNOLOGIST))).status_code == 403
    assert _post(client, url, b"{not json", rad_key).status_code == 400
    assert _post(client, url, [1, 2], rad_key).status_code == 400
    assert _post(client, url, {"findings": "no accession"}, rad_key).status_code == 400
    assert _post(client, url, {**good, "sign": "ADDENDUM"}, rad_key).status_code == 400
    assert _post(client, url, {**good, "findings": 12}, rad_key).status_code == 400
    assert _post(client, url, {**good, "accession_number": "NOPE"}, rad_key).status_code == 404
    assert _post(client, url, {**good, "critical_result": True}, rad_key).status_code == 422
    assert _post(client, url, {**good, "critical_result": True, "critical_communicated_to": "ED",
                               "critical_communicated_at": "not a time"}, rad_key).status_code == 400
    assert client.get(url, HTTP_AUTHORIZATION=f"Token {rad_key}").status_code == 405
    assert not ReportVersion.objects.exists()  # nothing half-written by refused requests
    assert _post(client, url, good, rad_key).status_code == 201
    assert _post(client, url, good, rad_key).status_code == 422  # final already signed


@pytest.mark.django_db
def test_api_respects_browser_claims(client, rad_key):
    rp = f.study()
    services.claim_study(rp.pk, f.user("other", RADIOLOGIST))
    r = _post(client, "/api/v1/reports/", {"accession_number": rp.accession_number, "findings": "x",
                                          "sign": "FINAL"}, rad_key)
    assert r.status_code == 403 and "claimed by" in r.json()["error"]


@pytest.mark.django_db
def test_session_login_is_not_enough_for_the_api(client):
    rp = f.study()
    client.force_login(f.user("rad", RADIOLOGIST))
    r = client.post("/api/v1/reports/", data=json.dumps({"accession_number": rp.accession_number}),
                    content_type="application/json")
    assert r.status_code == 401


@pytest.mark.django_db
def test_create_api_token_command(capsys):
    f.user("rad", RADIOLOGIST)
    call_command("create_api_token", "rad", "--name", "SpeechCo")
    key = capsys.readouterr().out.strip()
    token = ApiToken.objects.get()
    assert token.key_sha256 == ApiToken.digest(key) and key not in token.key_sha256


@pytest.mark.django_db
def test_a_tokens_last_use_is_noted_to_the_minute_without_a_write_per_request(client, rad_key,
                                                                              django_assert_num_queries):
    import datetime as dt

    from django.utils import timezone

    url = "/api/v1/reports/NO-SUCH-ACCESSION/"
    assert client.get(url, HTTP_AUTHORIZATION=f"Token {rad_key}").status_code == 404
    token = ApiToken.objects.get()
    first = token.last_used_at
    assert first is not None
    with django_assert_num_queries(2):  # the token with its user's roles, the report looked for: no UPDATE
        assert client.get(url, HTTP_AUTHORIZATION=f"Token {rad_key}").status_code == 404
    assert ApiToken.objects.get().last_used_at == first
    ApiToken.objects.update(last_used_at=timezone.now() - dt.timedelta(minutes=2))
    assert client.get(url, HTTP_AUTHORIZATION=f"Token {rad_key}").status_code == 404
    assert ApiToken.objects.get().last_used_at > first


@pytest.mark.django_db
def test_the_token_lookup_reads_the_user_and_every_role_in_one_statement(django_assert_num_queries):
    """The user comes back whole (as the ORM loads it) with all its groups' roles; an inactive
    user's or a revoked token's key finds no one; a superuser counts as an administrator."""
    from django.contrib.auth.models import Group

    from project.access import ADMINISTRATOR, has_role, user_roles
    from worklist.api import user_for_token

    both = f.user("both", RADIOLOGIST, first_name="Bo", last_name="Th")
    both.groups.add(Group.objects.get(name=ADMINISTRATOR))
    key = _token(both)
    user_for_token(key)  # notes the last use (an UPDATE) once
    with django_assert_num_queries(1):
        user = user_for_token(key)
        assert user_roles(user) == {RADIOLOGIST, ADMINISTRATOR} and has_role(user, ADMINISTRATOR)
    assert (user.pk, user.get_username(), user.get_full_name(), user.is_active) == (both.pk, "both", "Bo Th", True)
    assert user.date_joined == both.date_joined and user.has_usable_password() == both.has_usable_password()

    lone = f.user("lone", TECHNOLOGIST)
    lone.groups.clear()
    assert user_roles(user_for_token(_token(lone))) == set()
    boss = f.user("boss", TECHNOLOGIST)
    boss.groups.clear()
    boss.is_superuser = True
    boss.save()
    assert user_roles(user_for_token(_token(boss))) == {ADMINISTRATOR}

    gone = f.user("gone", RADIOLOGIST)
    gone_key = _token(gone)
    gone.is_active = False
    gone.save()
    assert user_for_token(gone_key) is None
    ApiToken.objects.filter(key_sha256=ApiToken.digest(key)).update(revoked_at="2026-01-01T00:00Z")
    assert user_for_token(key) is None and user_for_token("") is None and user_for_token("no-such-key") is None


@pytest.mark.django_db
def test_oversized_bodies_are_refused(client, rad_key):
    rp = f.study()
    r = _post(client, "/api/v1/reports/", {"accession_number": rp.accession_number, "findings": "x" * 100_001,
                                          "sign": "FINAL"}, rad_key)
    assert r.status_code == 422 and "longer than" in r.json()["error"]
    huge = json.dumps({"accession_number": rp.accession_number, "findings": "x" * 3_000_000}).encode()
    assert _post(client, "/api/v1/reports/", huge, rad_key).status_code == 400
    assert not ReportVersion.objects.exists()
