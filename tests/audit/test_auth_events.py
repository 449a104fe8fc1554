"""Sign-in, sign-out and account changes on the audit trail (accounts.auth_audit), through the real
login page and the real admin."""

from __future__ import annotations

import logging
import re

import pytest
from django.contrib.auth.models import Group, User
from django.db import transaction
from django.test import Client

from accounts import auth_audit
from audit.models import AuditRecord
from project.access import ADMINISTRATOR, PRIVACY_OFFICER, RADIOLOGIST, TECHNOLOGIST
from project.auditing import events

PASSWORD = "pw-For-Tests-1"


def _auth_records():
    return list(AuditRecord.records.filter(event_id=events.USER_AUTHENTICATION.value).order_by("id"))


def _alerts(event_type):
    return list(AuditRecord.records.filter(event_id=events.SECURITY_ALERT.value, event_type=event_type.value)
                .order_by("id"))


def _csrf(client: Client, url: str) -> str:
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', client.get(url).content.decode()).group(1)


@pytest.mark.django_db
def test_login_logout_and_failed_login_through_the_login_page(caplog):
    User.objects.create_user("rad1", password=PASSWORD).groups.add(Group.objects.get(name=RADIOLOGIST))
    client = Client(REMOTE_ADDR="198.51.100.7", enforce_csrf_checks=True)
    caplog.set_level(logging.DEBUG)
    secret_typed_as_name = "Tr0ub4dor&3-typed-in-the-wrong-field"
    page = client.post("/accounts/login/", {"username": secret_typed_as_name, "password": "whatever",
                                            "csrfmiddlewaretoken": _csrf(client, "/accounts/login/")})
    assert page.status_code == 200  # the form again, with its error
    (failed,) = _auth_records()
    assert (failed.event_type, failed.action, failed.outcome) == (events.LOGIN.value, "E", events.MINOR_FAILURE)
    assert (failed.actor, failed.actor_kind, failed.source_address) == (secret_typed_as_name, "user", "198.51.100.7")
    assert secret_typed_as_name not in caplog.text  # stored on the trail, never logged

    done = client.post("/accounts/login/", {"username": "rad1", "password": PASSWORD,
                                            "csrfmiddlewaretoken": _csrf(client, "/accounts/login/")})
    assert done.status_code == 302
    login = _auth_records()[-1]
    assert (login.event_type, login.outcome, login.actor, login.source_address) == (
        events.LOGIN.value, events.SUCCESS, "rad1", "198.51.100.7")

    token = client.cookies["csrftoken"].value
    assert client.post("/accounts/logout/", {"csrfmiddlewaretoken": token}).status_code in (200, 302)
    logout = _auth_records()[-1]
    assert (logout.event_type, logout.outcome, logout.actor, logout.source_address) == (
        events.LOGOUT.value, events.SUCCESS, "rad1", "198.51.100.7")
    assert len(_auth_records()) == 3
    # A logout without a session records nothing (nobody signed out).
    Client().post("/accounts/logout/")
    assert len(_auth_records()) == 3


@pytest.mark.django_db
def test_the_source_address_is_the_clients_behind_a_trusted_proxy_only(settings):
    settings.WEB_TRUSTED_PROXIES = ["10.0.0.7"]
    User.objects.create_user("tech1", password=PASSWORD)
    via_proxy = Client(REMOTE_ADDR="10.0.0.7", HTTP_X_FORWARDED_FOR="203.0.113.9")
    via_proxy.post("/accounts/login/", {"username": "tech1", "password": PASSWORD})
    forged = Client(REMOTE_ADDR="192.0.2.50", HTTP_X_FORWARDED_FOR="203.0.113.9")
    forged.post("/accounts/login/", {"username": "tech1", "password": "wrong"})
    login, failed = _auth_records()
    assert (login.outcome, login.source_address) == (events.SUCCESS, "203.0.113.9")
    assert (failed.outcome, failed.source_address) == (events.MINOR_FAILURE, "192.0.2.50")


@pytest.mark.django_db(transaction=True)
def test_a_failed_login_is_committed_before_the_answer():
    """Durable before the response: another connection sees it at once (no later writer)."""
    import psycopg

    from tests.support.postgres import conninfo

    Client(REMOTE_ADDR="192.0.2.60").post("/accounts/login/", {"username": "nobody", "password": "x"})
    with psycopg.connect(conninfo()) as other:
        rows = other.execute("SELECT actor, outcome, source_address FROM audit_auditrecord WHERE event_id = %s",
                             [events.USER_AUTHENTICATION.value]).fetchall()
    assert rows == [("nobody", events.MINOR_FAILURE, "192.0.2.60")]


def _admin_client(address="192.0.2.10") -> Client:
    boss = User.objects.create_superuser("boss", password=PASSWORD)
    client = Client(REMOTE_ADDR=address)
    client.force_login(boss)
    return client


def _change_form(user: User, **changes) -> dict:
    data = {"username": user.username, "first_name": user.first_name, "last_name": user.last_name,
            "email": user.email, "is_active": "on", "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
            "date_joined_1": user.date_joined.strftime("%H:%M:%S"), "initial-date_joined_0": "",
            "initial-date_joined_1": "", "groups": [g.pk for g in user.groups.all()]}
    data.update(changes)
    return data


@pytest.mark.django_db
def test_roles_changed_through_the_admin():
    client = _admin_client()
    user = User.objects.create_user("someone", password=PASSWORD)
    user.groups.add(Group.objects.get(name=TECHNOLOGIST))
    before = len(_alerts(events.SECURITY_ROLES_CHANGED))
    radiologist, po = Group.objects.get(name=RADIOLOGIST), Group.objects.get(name=PRIVACY_OFFICER)
    response = client.post(f"/admin/auth/user/{user.pk}/change/", _change_form(user, groups=[radiologist.pk, po.pk]))
    assert response.status_code == 302, response.content.decode()[:2000]
    assert set(user.groups.values_list("name", flat=True)) == {RADIOLOGIST, PRIVACY_OFFICER}
    changes = _alerts(events.SECURITY_ROLES_CHANGED)[before:]
    assert {k: v for r in changes for k, v in r.detail.items()} == {
        "added": [PRIVACY_OFFICER, RADIOLOGIST], "removed": [TECHNOLOGIST]}
    for r in changes:
        assert (r.action, r.actor, r.actor_kind, r.source_address) == ("U", "boss", "user", "192.0.2.10")
        assert r.objects == [{"type": "account", "id": "someone"}]


@pytest.mark.django_db
def test_account_created_and_password_and_flags_changed_through_the_admin():
    client = _admin_client()
    created = client.post("/admin/auth/user/add/", {"username": "newbie", "password1": "Another-pw-4-tests",
                                                    "password2": "Another-pw-4-tests", "usable_password": "true"})
    assert created.status_code == 302
    user = User.objects.get(username="newbie")
    boss, new = [r for r in _alerts(events.USER_SECURITY_ATTRIBUTES_CHANGED) if r.action == "C"]
    assert (boss.actor, boss.actor_kind, boss.detail["is_superuser"]) == ("pacs", "system", True)
    assert (new.actor, new.objects, new.detail["created"], new.detail["is_superuser"]) == (
        "boss", [{"type": "account", "id": "newbie"}], True, False)
    assert "Another-pw" not in str(new.detail)

    before = len(_alerts(events.USER_SECURITY_ATTRIBUTES_CHANGED))
    changed = client.post(f"/admin/auth/user/{user.pk}/password/", {
        "password1": "Changed-pw-4-tests", "password2": "Changed-pw-4-tests", "usable_password": "true"})
    assert changed.status_code == 302
    (pw,) = _alerts(events.USER_SECURITY_ATTRIBUTES_CHANGED)[before:]
    assert (pw.action, pw.actor, pw.detail) == ("U", "boss", {"changed": {}, "password_changed": True})
    assert "Changed-pw" not in str(pw.detail) and user.password[:20] not in str(pw.detail)

    before = len(_alerts(events.USER_SECURITY_ATTRIBUTES_CHANGED))
    response = client.post(f"/admin/auth/user/{user.pk}/change/", _change_form(user, is_staff="on"))
    assert response.status_code == 302
    (staff,) = _alerts(events.USER_SECURITY_ATTRIBUTES_CHANGED)[before:]
    assert staff.detail == {"changed": {"is_staff": {"old": False, "new": True}}}

    # A save that changes none of them (and a sign-in's last_login) adds nothing.
    before = len(_alerts(events.USER_SECURITY_ATTRIBUTES_CHANGED))
    response = client.post(f"/admin/auth/user/{user.pk}/change/", _change_form(user, is_staff="on", first_name="N"))
    assert response.status_code == 302
    signed_in = Client().post("/accounts/login/", {"username": "newbie", "password": "Changed-pw-4-tests"})
    assert signed_in.status_code == 302
    assert len(_alerts(events.USER_SECURITY_ATTRIBUTES_CHANGED)) == before


@pytest.mark.django_db
def test_an_account_change_and_its_record_roll_back_together():
    user = User.objects.create_user("someone", password=PASSWORD)
    before = AuditRecord.records.count()

    class Abandoned(Exception):
        pass

    with pytest.raises(Abandoned), transaction.atomic():
        user.groups.add(Group.objects.get(name=ADMINISTRATOR))
        assert AuditRecord.records.count() == before + 1
        raise Abandoned
    assert AuditRecord.records.count() == before
    # Outside a request the engine is the actor; group.user_set names the account too.
    Group.objects.get(name=RADIOLOGIST).user_set.add(user)
    (added,) = _alerts(events.SECURITY_ROLES_CHANGED)
    assert (added.actor, added.actor_kind, added.detail) == ("pacs", "system", {"added": [RADIOLOGIST]})
    user.groups.clear()
    cleared = _alerts(events.SECURITY_ROLES_CHANGED)[-1]
    assert cleared.detail == {"removed": [RADIOLOGIST]} and cleared.objects == [{"type": "account", "id": "someone"}]


@pytest.mark.django_db
def test_a_lockout_is_a_security_alert():
    """The receiver of the sign-in module's lockout signal (django-axes' user_locked_out)."""
    auth_audit.record_account_locked(sender=None, username="guessed", ip_address="192.0.2.99", request=None)
    (locked,) = _alerts(events.USER_SECURITY_ATTRIBUTES_CHANGED)
    assert (locked.actor, locked.source_address, locked.outcome, locked.objects, locked.detail) == (
        "guessed", "192.0.2.99", events.SERIOUS_FAILURE, [{"type": "account", "id": "guessed"}], {"lockout": True})
    from accounts.signals import account_locked

    account_locked.send(sender=__name__, username="other", ip_address="192.0.2.98", request=None)
    assert _alerts(events.USER_SECURITY_ATTRIBUTES_CHANGED)[-1].actor == "other"
