"""Browser tests: Debian's headless Chromium driven by Playwright against pytest-django's live server.

Playwright's own browser download does not work here: the browser is ``/usr/bin/chromium``
(``executable_path``); never ``playwright install``.  Playwright's sync API runs an event
loop in the test thread, so Django's async-safety guard is relaxed for these tests only.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium; make test does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def new_page(browser):
    """Factory of pages, each in its own browser context (its own cookies: its own user)."""
    contexts = []

    def make():
        ctx = browser.new_context()
        ctx.set_default_timeout(15_000)
        contexts.append(ctx)
        return ctx.new_page()

    yield make
    for ctx in contexts:
        ctx.close()


@pytest.fixture(scope="session")
def builtin_viewer():
    """The built-in viewer installed where the engine serves it from (VIEWER_DIR), as
    ``manage.py install_viewer`` does for ``make test``: nothing to do when it is already there."""
    from django.conf import settings

    from worklist import ohif

    try:
        ohif.install(settings.VIEWER_DIR, log=lambda _: None)
    except ohif.InstallError as exc:
        pytest.fail(f"the built-in viewer cannot be installed: {exc}")
    return ohif.installed_dir(settings.VIEWER_DIR)
