"""Accounts in Chromium: a lockout and an administrator's unlock in the admin, a directory sign-in
against a real slapd, and the idle sign-out (the session's clock moved, not waited for)."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Group, User
from django.contrib.sessions.backends.db import SessionStore

from accounts import sessions
from tests.support.browser import login
from tests.support.ldap_server import PASSWORD as DIRECTORY_PASSWORD

pytestmark = [pytest.mark.django_db(transaction=True)]
PW = "pw-For-Tests-1"


def _user(username: str, role: str | None = None, **flags) -> User:
    user = User.objects.create_user(username, password=PW, **flags)
    if role:
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user


def _submit(page, live_server, username: str, password: str):
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def test_a_locked_account_refuses_the_right_password_until_an_administrator_unlocks_it(live_server, new_page, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    _user("rada", "radiologist")
    _user("boss", is_staff=True, is_superuser=True)
    page = new_page()
    for _ in range(3):
        _submit(page, live_server, "rada", "wrong")
    assert page.locator("h1").inner_text() == "Sign-in locked"
    _submit(page, live_server, "rada", PW)
    assert page.locator("h1").inner_text() == "Sign-in locked"

    # The lock covers this browser's address too: the administrator signs in from another one
    # (behind the trusted proxy, as a hospital's reverse proxy would forward it).
    settings.WEB_TRUSTED_PROXIES = ["127.0.0.1"]
    admin = new_page()
    admin.context.set_extra_http_headers({"X-Forwarded-For": "10.20.30.40"})
    admin.goto(f"{live_server.url}/admin/axes/accessattempt/")
    admin.fill("input[name=username]", "boss")
    admin.fill("input[name=password]", PW)
    admin.get_by_role("button", name="Log in").click()
    admin.wait_for_url(f"{live_server.url}/admin/axes/accessattempt/")
    admin.check("#action-toggle")
    admin.select_option("select[name=action]", "delete_selected")
    admin.click("button[name=index]")
    admin.get_by_role("button", name=re.compile("Yes")).click()
    admin.wait_for_url(f"{live_server.url}/admin/axes/accessattempt/")
    assert "0 access attempts" in admin.content()

    login(page, live_server, "rada")
    assert page.locator("#reading-worklist").count() == 1


def test_a_directory_radiologist_signs_in_in_the_browser(live_server, new_page, directory_settings):
    page = login(new_page(), live_server, "drad", DIRECTORY_PASSWORD)
    assert page.locator("#reading-worklist").count() == 1
    assert set(User.objects.get(username="drad").groups.values_list("name", flat=True)) == {"radiologist"}


def test_an_idle_session_is_signed_out_and_the_worklist_refresh_does_not_keep_it(live_server, new_page, settings):
    settings.SESSION_IDLE_MINUTES = 30
    _user("rada", "radiologist")
    page = login(new_page(), live_server, "rada")
    key = next(c["value"] for c in page.context.cookies() if c["name"] == "sessionid")
    store = SessionStore(session_key=key)
    store[sessions.LAST_ACTIVITY] -= 25 * 60  # 25 minutes without activity
    store.save()
    page.evaluate("window.readingWorklistRefresh()")  # the self-refresh: answered, not activity
    # A function, not an expression: Playwright evaluates an expression with eval, which the
    # pages' Content-Security-Policy refuses.
    page.wait_for_function("() => document.getElementById('refresh-status').textContent.startsWith('Updated')")
    store = SessionStore(session_key=key)
    store[sessions.LAST_ACTIVITY] -= 5 * 60 + 1  # now past 30 minutes idle
    store.save()
    page.reload()
    assert "/accounts/login/" in page.url
    assert page.locator("input[name=password]").count() == 1
