"""The web process as every start runs it (gunicorn reading gunicorn.conf.py) with WEB_TLS=true
and a certificate from a test CA: a real HTTPS client verifies the server against that CA, the
cookies are Secure and HSTS is sent; a client that offers only TLS 1.1 is refused (RFC 8996, BCP
195); X-Forwarded-Proto from the same host changes nothing; the container healthcheck speaks HTTPS."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
from django.db import connection

from tests.support.net import free_port
from tests.support.tls_certs import TestPKI

pytestmark = [pytest.mark.socket, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **extra) -> dict[str, str]:
    db = connection.settings_dict
    return {**os.environ, "VAR_DIR": str(tmp_path / "var"), "WEB_WORKERS": "1",
            "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            **extra}


def _wait_listening(process: subprocess.Popen, port: int, deadline: float = 60.0) -> None:
    """Until the port accepts a connection (or gunicorn exits)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        assert process.poll() is None, process.stdout.read()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("gunicorn did not listen")


@pytest.fixture
def https_web(tmp_path):
    pki = TestPKI(tmp_path / "pki")
    engine = pki.issue("engine", dns=["localhost"], ips=["127.0.0.1"])
    port = free_port()
    env = _env(tmp_path, WEB_PORT=str(port), WEB_TLS="true", TLS_CERTIFICATE=str(engine.chain),
               TLS_PRIVATE_KEY=str(engine.key))
    process = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "project.wsgi"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_listening(process, port)
        yield pki, port, env
    finally:
        process.terminate()
        process.wait(timeout=30)


def _get(port: int, context: ssl.SSLContext, headers: dict | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=30)
    conn.request("GET", "/accounts/login/", headers=headers or {})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def _legacy_client() -> ssl.SSLContext:
    """A client that offers TLS 1.1 only (security level 0, so that OpenSSL lets it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


def test_https_verified_against_the_ca_with_secure_cookies_and_hsts(https_web):
    pki, port, _ = https_web
    client = ssl.create_default_context(cafile=str(pki.ca_file))
    response = _get(port, client)
    assert response.status == 200
    cookie = SimpleCookie(response.headers["Set-Cookie"])["csrftoken"]
    assert cookie["secure"] is True and cookie["httponly"] == ""
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000"
    # Against the system's trust store alone the test CA's certificate is refused.
    with pytest.raises(ssl.SSLCertVerificationError):
        _get(port, ssl.create_default_context())


def test_tls_1_1_is_refused(https_web, tmp_path):
    _, port, _ = https_web
    with pytest.raises(ssl.SSLError) as refused:
        _get(port, _legacy_client())
    assert "NO_PROTOCOLS_AVAILABLE" not in str(refused.value)  # offered by the client, refused by gunicorn
    # The same client completes a TLS 1.1 handshake with a server that allows it: the refusal above
    # is gunicorn's TLS 1.2 minimum.
    pki = TestPKI(tmp_path / "legacy")
    legacy = pki.issue("legacy", ips=["127.0.0.1"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.set_ciphers("DEFAULT:@SECLEVEL=0")
        server.minimum_version = ssl.TLSVersion.TLSv1_1
    server.load_cert_chain(legacy.chain, legacy.key)
    listener = socket.create_server(("127.0.0.1", 0))
    versions: list[str] = []

    def accept():
        sock, _ = listener.accept()
        with server.wrap_socket(sock, server_side=True) as tls:
            versions.append(tls.version())

    thread = threading.Thread(target=accept)
    thread.start()
    with _legacy_client().wrap_socket(socket.create_connection(listener.getsockname(), timeout=10)) as tls:
        assert tls.version() == "TLSv1.1"
    thread.join(10)
    listener.close()
    assert versions == ["TLSv1.1"]


def test_forwarded_proto_from_this_host_is_not_believed_and_health_speaks_https(https_web):
    pki, port, env = https_web
    client = ssl.create_default_context(cafile=str(pki.ca_file))
    # gunicorn's own X-Forwarded-* handling is off: a forged "http" does not turn HTTPS into HTTP either.
    response = _get(port, client, {"X-Forwarded-Proto": "http", "X-Forwarded-Ssl": "off"})
    assert SimpleCookie(response.headers["Set-Cookie"])["csrftoken"]["secure"] is True
    health = subprocess.run([sys.executable, "manage.py", "health", "web", "--port", str(port), "--timeout", "5"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert health.returncode == 0, health.stdout + health.stderr


def test_web_tls_without_a_certificate_does_not_start_in_plain_http(tmp_path):
    env = _env(tmp_path, WEB_PORT=str(free_port()), WEB_TLS="true", TLS_CERTIFICATE="", TLS_PRIVATE_KEY="")
    result = subprocess.run([str(Path(sys.executable).parent / "gunicorn"), "project.wsgi"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "WEB_TLS=true needs TLS_CERTIFICATE and TLS_PRIVATE_KEY" in result.stdout + result.stderr
