"""The Content-Security-Policy in Chromium: the reading worklist (with its self-refresh), the study
page (its editor and autosave script), the admin (a change list and a change form with its
scripts) and the operator's console render and run with no violation reported."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User

from project.access import ADMINISTRATOR, RADIOLOGIST
from project.csp import POLICY
from tests.factories import reading as f
from tests.support.browser import login

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

# Every violation fires a ``securitypolicyviolation`` event; the listener is injected by the
# browser driver (not by the page), so the policy does not block it.
WATCH = """window.__csp = [];
document.addEventListener('securitypolicyviolation',
  e => window.__csp.push(e.violatedDirective + ' ' + (e.blockedURI || 'inline')));"""


def _watched(page):
    console = []
    page.on("console", lambda m: console.append(m.text) if "Content Security Policy" in m.text else None)
    page.add_init_script(WATCH)
    return page, console


def _violations(page, console) -> list[str]:
    return console + page.evaluate("window.__csp || []")


def test_worklist_study_console_and_admin_run_without_a_violation(live_server, new_page):
    rp = f.study(priority="STAT", patient_name="CSP^CHECK")
    f.user("rad_csp", RADIOLOGIST)
    page, console = _watched(new_page())
    login(page, live_server, "rad_csp")
    response = page.goto(f"{live_server.url}/")
    assert response.headers["content-security-policy"] == POLICY
    page.evaluate("window.readingWorklistRefresh()")  # worklist.js runs (self-refresh)
    page.wait_for_selector(f"tr[data-accession='{rp.accession_number}']")
    page.click(f"tr[data-accession='{rp.accession_number}'] a")
    page.click("#start-reading")
    page.wait_for_selector("#report-editor")
    page.fill("textarea[name=findings]", "Findings typed under the policy.")
    page.wait_for_selector("#autosave-status:has-text('Draft saved')")  # editor.js ran and posted
    assert page.evaluate("getComputedStyle(document.querySelector('header')).display") == "flex"  # site.css
    assert _violations(page, console) == []

    admin = User.objects.create_superuser("csp_admin", password="pw-For-Tests-1")
    admin.groups.add(Group.objects.get_or_create(name=ADMINISTRATOR)[0])  # the operator's console too
    page, console = _watched(new_page())
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("input[name=username]", "csp_admin")
    page.fill("input[name=password]", "pw-For-Tests-1")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/")
    for url in ("/admin/", "/admin/auth/user/", f"/admin/auth/user/{admin.pk}/change/",
                "/admin/hl7gateway/inboundmessage/", "/monitoring/"):
        response = page.goto(f"{live_server.url}{url}")
        assert response.status == 200 and response.headers["content-security-policy"] == POLICY, url
        page.wait_for_load_state("load")
    assert _violations(page, console) == []


def test_an_inline_script_is_blocked_and_reported(live_server, new_page):
    """The watch above does see a violation: a script added inline to a page does not run."""
    f.user("rad_inline", RADIOLOGIST)
    page, console = _watched(new_page())
    login(page, live_server, "rad_inline")
    page.evaluate("""() => { const s = document.createElement('script');
        s.textContent = 'window.__ran = true'; document.body.appendChild(s); }""")
    page.wait_for_function("() => window.__csp.length > 0")
    assert page.evaluate("window.__ran === undefined")
    assert any("script-src" in v and "inline" in v for v in _violations(page, console))
