"""Driving the web UI in the browser tests (Playwright pages on pytest-django's live server)."""

from __future__ import annotations

from tests.factories import PASSWORD


def login(page, live_server, username: str, password: str = PASSWORD):
    """Sign in as ``username`` through the login form every page sends an anonymous user to."""
    page.goto(f"{live_server.url}/")
    assert "/accounts/login/" in page.url  # every page asks for a login first
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    return page
