"""Sign-in lockouts and session limits, through the real sign-in page on PostgreSQL.

Lockouts are django-axes (accounts.signin); the client address is the one project.https believes.
Session limits are accounts.sessions: the tests move the session's clock (its stored times) rather
than wait.
"""

from __future__ import annotations

import datetime as dt
import io

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import Group, User
from django.contrib.sessions.backends.db import SessionStore
from django.core.management import call_command
from django.test import Client, RequestFactory
from django.utils import timezone

from accounts import sessions
from accounts.signals import account_locked
from project.https import client_address

PASSWORD = "pw-For-Tests-1"
LOGIN = "/accounts/login/"


@pytest.fixture
def radiologist(db):
    user = User.objects.create_user("rlocal", password=PASSWORD)
    user.groups.add(Group.objects.get(name="radiologist"))
    return user


def sign_in(client: Client, username: str, password: str, **extra):
    return client.post(LOGIN, {"username": username, "password": password}, **extra)


def signed_in(client: Client) -> bool:
    response = client.get("/")
    return response.status_code == 200


# --- lockout ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_right_password_after_the_failure_limit_is_refused_until_an_administrator_unlocks(radiologist, settings):
    settings.LOGIN_FAILURE_LIMIT = 5
    client = Client()
    for _ in range(4):
        assert sign_in(client, "rlocal", "wrong").status_code == 200  # the form again, with its error
    locked = sign_in(client, "rlocal", "wrong")
    assert locked.status_code == 429
    assert "Sign-in locked" in locked.content.decode()
    refused = sign_in(client, "rlocal", PASSWORD)
    assert refused.status_code == 429
    assert not signed_in(client)

    out = io.StringIO()
    call_command("unlock_account", "rlocal", stdout=out)
    assert "unlocked rlocal" in out.getvalue()
    assert sign_in(client, "rlocal", PASSWORD).status_code == 302
    assert signed_in(client)


@pytest.mark.django_db
def test_a_user_name_that_does_not_exist_is_locked_with_the_same_page(radiologist):
    pages = {}
    for name in ("rlocal", "nobody-here"):
        client = Client(REMOTE_ADDR=f"10.9.0.{len(pages) + 1}")
        for _ in range(5):
            response = sign_in(client, name, "wrong")
        assert response.status_code == 429
        pages[name] = response.content.decode()
    assert pages["rlocal"] == pages["nobody-here"]
    assert "rlocal" not in pages["rlocal"]


@pytest.mark.django_db
def test_one_address_guessing_many_user_names_is_locked(radiologist):
    client = Client(REMOTE_ADDR="10.9.1.1")
    for n in range(5):
        sign_in(client, f"guess{n}", "wrong")
    # A real user's right password from that address is refused; from elsewhere it works.
    assert sign_in(client, "rlocal", PASSWORD).status_code == 429
    assert sign_in(Client(REMOTE_ADDR="10.9.1.2"), "rlocal", PASSWORD).status_code == 302


@pytest.mark.django_db
def test_lockout_minutes_zero_keeps_the_lock_and_a_time_limit_says_how_long(radiologist, settings):
    settings.LOGIN_LOCKOUT_MINUTES = 0
    settings.AXES_COOLOFF_TIME = None  # as project.settings derives it from LOGIN_LOCKOUT_MINUTES
    client = Client()
    for _ in range(5):
        response = sign_in(client, "rlocal", "wrong")
    assert "until an administrator unlocks it" in response.content.decode()
    AccessAttempt.objects.update(attempt_time="2000-01-01T00:00:00Z")  # long ago: still locked
    assert sign_in(client, "rlocal", PASSWORD).status_code == 429

    settings.LOGIN_LOCKOUT_MINUTES = 15
    settings.AXES_COOLOFF_TIME = dt.timedelta(minutes=15)
    call_command("unlock_account", "--address", "127.0.0.1", stdout=io.StringIO())
    call_command("unlock_account", "rlocal", stdout=io.StringIO())
    for _ in range(5):
        response = sign_in(client, "rlocal", "wrong")
    assert "for 0:15:00" in response.content.decode()
    # The cool-off is counted from the last failure: moved 16 minutes back, the lock is over.
    AccessAttempt.objects.update(attempt_time=timezone.now() - dt.timedelta(minutes=16))
    assert sign_in(client, "rlocal", PASSWORD).status_code == 302


@pytest.mark.django_db
def test_a_success_clears_the_count_so_mistakes_do_not_add_up_over_days(radiologist):
    client = Client()
    for _ in range(4):
        sign_in(client, "rlocal", "wrong")
    assert sign_in(client, "rlocal", PASSWORD).status_code == 302
    client.post("/accounts/logout/")
    for _ in range(4):
        sign_in(client, "rlocal", "wrong")
    assert sign_in(client, "rlocal", PASSWORD).status_code == 302


@pytest.mark.django_db
def test_a_lockout_is_announced_as_a_security_event(radiologist):
    events = []

    def listener(sender, **kwargs):
        events.append((kwargs["username"], kwargs["ip_address"]))

    account_locked.connect(listener)
    try:
        client = Client(REMOTE_ADDR="10.9.2.1")
        for _ in range(4):
            sign_in(client, "rlocal", "wrong")
        assert events == []
        sign_in(client, "rlocal", "wrong")
    finally:
        account_locked.disconnect(listener)
    assert ("rlocal", "10.9.2.1") in events


@pytest.mark.django_db
def test_behind_a_trusted_proxy_the_forwarded_client_is_counted_not_the_proxy(radiologist, settings):
    settings.WEB_TRUSTED_PROXIES = ["10.0.0.5"]
    proxy = Client(REMOTE_ADDR="10.0.0.5")
    for n in range(5):
        sign_in(proxy, f"guess{n}", "wrong", HTTP_X_FORWARDED_FOR="203.0.113.7")
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"203.0.113.7"}
    # Another client behind the same proxy is not locked by the first one's guesses.
    assert sign_in(proxy, "rlocal", PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.8").status_code == 302


@pytest.mark.django_db
def test_a_client_cannot_choose_its_address_with_x_forwarded_for(radiologist, settings):
    settings.WEB_TRUSTED_PROXIES = ["10.0.0.5"]
    client = Client(REMOTE_ADDR="198.51.100.9")
    for n in range(5):
        sign_in(client, f"guess{n}", "wrong", HTTP_X_FORWARDED_FOR=f"192.0.2.{n}")
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"198.51.100.9"}
    assert sign_in(client, "rlocal", PASSWORD, HTTP_X_FORWARDED_FOR="192.0.2.77").status_code == 429


def test_client_address_reads_x_forwarded_for_from_the_right_through_trusted_proxies(settings):
    settings.WEB_TRUSTED_PROXIES = ["10.0.0.0/24"]
    factory = RequestFactory()
    # Spoofed left-most entry, then the client the outer proxy saw, then an inner proxy.
    request = factory.get("/", REMOTE_ADDR="10.0.0.5", HTTP_X_FORWARDED_FOR="1.2.3.4, 203.0.113.7, 10.0.0.9")
    assert client_address(request) == "203.0.113.7"
    assert client_address(factory.get("/", REMOTE_ADDR="10.0.0.5")) == "10.0.0.5"
    assert client_address(factory.get("/", REMOTE_ADDR="203.0.113.1", HTTP_X_FORWARDED_FOR="10.0.0.1")) == "203.0.113.1"


# --- sessions --------------------------------------------------------------------------------


def _session(client: Client) -> SessionStore:
    return SessionStore(session_key=client.cookies["sessionid"].value)


def _move_clock(client: Client, **seconds_back) -> None:
    """Move the session's recorded times back, as if that much time had passed."""
    store = _session(client)
    for key, back in seconds_back.items():
        store[key] = store[key] - back
    store.save()


@pytest.mark.django_db
def test_a_session_idle_for_the_limit_is_signed_out(radiologist, settings):
    settings.SESSION_IDLE_MINUTES = 30
    client = Client()
    assert sign_in(client, "rlocal", PASSWORD).status_code == 302
    _move_clock(client, pacs_last_activity=29 * 60, pacs_signed_in_at=29 * 60)
    assert signed_in(client)  # 29 minutes idle: still in, and this request is activity
    _move_clock(client, pacs_last_activity=30 * 60 + 1, pacs_signed_in_at=30 * 60)
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith(LOGIN)
    assert not SessionStore().exists(client.cookies["sessionid"].value) or not signed_in(client)


@pytest.mark.django_db
def test_activity_is_written_at_most_once_a_minute_and_background_refreshes_do_not_count(radiologist):
    client = Client()
    sign_in(client, "rlocal", PASSWORD)
    first = _session(client)[sessions.LAST_ACTIVITY]
    assert signed_in(client)
    assert _session(client)[sessions.LAST_ACTIVITY] == first  # not rewritten within the minute
    _move_clock(client, pacs_last_activity=20 * 60)
    moved = _session(client)[sessions.LAST_ACTIVITY]
    background = client.get("/?partial=1", HTTP_X_BACKGROUND_REFRESH="1")
    assert background.status_code == 200
    assert _session(client)[sessions.LAST_ACTIVITY] == moved  # the worklist's self-refresh
    assert signed_in(client)
    assert _session(client)[sessions.LAST_ACTIVITY] > moved + 19 * 60  # a page the user opened


@pytest.mark.django_db
def test_a_session_ends_at_the_absolute_maximum_however_active(radiologist, settings):
    settings.SESSION_MAX_HOURS = 12
    client = Client()
    sign_in(client, "rlocal", PASSWORD)
    _move_clock(client, pacs_signed_in_at=12 * 3600 - 60)
    assert signed_in(client)
    _move_clock(client, pacs_signed_in_at=61)
    assert not signed_in(client)


@pytest.mark.django_db
def test_a_password_change_ends_the_other_browsers_session(radiologist):
    other_browser = Client()
    sign_in(other_browser, "rlocal", PASSWORD)
    assert signed_in(other_browser)
    radiologist.set_password("a-New-pw-For-Tests-2")
    radiologist.save()
    response = other_browser.get("/")
    assert response.status_code == 302 and response["Location"].startswith(LOGIN)
