"""Whether a request is HTTPS, and what follows (project.https with Django's SecurityMiddleware):
Secure session and CSRF cookies (RFC 6265 4.1.2.5) and HSTS (RFC 6797) on HTTPS only, plain HTTP
left working, X-Forwarded-Proto believed only from WEB_TRUSTED_PROXIES, the optional redirect."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from tests.factories import user

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"
HSTS = "Strict-Transport-Security"


def login(client, **request):
    """GET the login form (sets the CSRF cookie), then log in (sets the session cookie)."""
    if not User.objects.filter(username="hana").exists():
        user("hana")
    page = client.get(LOGIN, **request)
    assert page.status_code == 200
    token = page.cookies["csrftoken"].value
    done = client.post(LOGIN, {"username": "hana", "password": "pw-For-Tests-1", "csrfmiddlewaretoken": token},
                       **request)
    assert done.status_code == 302, done.content[:300]
    return page, done


def secure_flags(page, done) -> tuple[bool, bool]:
    return bool(page.cookies["csrftoken"]["secure"]), bool(done.cookies["sessionid"]["secure"])


def test_plain_http_keeps_cookies_usable_and_sends_no_hsts(client):
    page, done = login(client)
    assert secure_flags(page, done) == (False, False)
    assert HSTS not in page.headers and HSTS not in done.headers


def test_https_marks_session_and_csrf_cookies_secure_and_sends_hsts(client):
    page, done = login(client, secure=True)
    assert secure_flags(page, done) == (True, True)
    assert page.headers[HSTS] == "max-age=31536000"  # one year, subdomains not included by default


def test_hsts_settings(client, settings):
    settings.SECURE_HSTS_SECONDS = 600
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    assert client.get(LOGIN, secure=True).headers[HSTS] == "max-age=600; includeSubDomains"


def test_forwarded_proto_from_an_untrusted_address_is_ignored(client, settings):
    settings.WEB_TRUSTED_PROXIES = ["10.0.0.0/24"]
    # The default client address (127.0.0.1) and an address just outside the proxies' network.
    for address in ("127.0.0.1", "10.0.1.5"):
        client.cookies.clear()
        page, done = login(client, HTTP_X_FORWARDED_PROTO="https", REMOTE_ADDR=address)
        assert secure_flags(page, done) == (False, False), address
        assert HSTS not in page.headers


def test_forwarded_proto_from_a_trusted_proxy_makes_the_request_https(client, settings):
    settings.WEB_TRUSTED_PROXIES = ["10.0.0.0/24", "::1"]
    page, done = login(client, HTTP_X_FORWARDED_PROTO="https", REMOTE_ADDR="10.0.0.7")
    assert secure_flags(page, done) == (True, True)
    assert page.headers[HSTS] == "max-age=31536000"
    # The proxy forwarding a plain HTTP request: not HTTPS.
    client.cookies.clear()
    plain = client.get(LOGIN, HTTP_X_FORWARDED_PROTO="http", REMOTE_ADDR="10.0.0.7")
    assert not plain.cookies["csrftoken"]["secure"] and HSTS not in plain.headers


def test_redirect_to_https_believes_only_trusted_proxies_and_spares_the_health_probe(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.WEB_TRUSTED_PROXIES = ["10.0.0.7"]
    plain = client.get(LOGIN)
    assert plain.status_code == 301 and plain.headers["Location"] == "https://testserver/accounts/login/"
    forged = client.get(LOGIN, HTTP_X_FORWARDED_PROTO="https", REMOTE_ADDR="192.0.2.1")
    assert forged.status_code == 301
    assert client.get(LOGIN, HTTP_X_FORWARDED_PROTO="https", REMOTE_ADDR="10.0.0.7").status_code == 200
    assert client.get(LOGIN, secure=True).status_code == 200
    assert client.get("/health/").status_code in (200, 503)  # answered, not redirected
