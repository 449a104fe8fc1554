"""gunicorn's configuration for the web process, read from the working directory by every start
(the Procfile, ``docker/compose.yaml`` and the image all run plain ``gunicorn project.wsgi``).

Settings from the environment (listed in ``.env.example``): WEB_PORT, WEB_WORKERS, WEB_TIMEOUT,
and WEB_TLS with TLS_CERTIFICATE / TLS_PRIVATE_KEY for HTTPS served by gunicorn itself.
"""

import os
import ssl


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else default


def _true(name: str) -> bool:
    # The same words as project.env.env_bool; a bad value is reported by ``manage.py check`` (pacs.E001).
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


bind = f"0.0.0.0:{_int('WEB_PORT', 8000)}"
workers = _int("WEB_WORKERS", 2)
timeout = _int("WEB_TIMEOUT", 60)
# Access log on standard output, one line a request: the path without its query string, which
# can carry a patient's name or ID (a worklist search).
accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms'
# No control socket (gunicorn >= 25 opens one in $HOME by default): nothing here uses it, and two
# instances on one host would share its path.
control_socket_disable = True
# Whether a request is HTTPS is decided in one place, project.https (X-Forwarded-Proto believed only from
# WEB_TRUSTED_PROXIES): gunicorn's own handling of the header (trusted from 127.0.0.1 by default)
# is turned off, so that it cannot set wsgi.url_scheme to https for a client on the same host.
forwarded_allow_ips = ""
secure_scheme_headers: dict[str, str] = {}

if _true("WEB_TLS"):
    # HTTPS served by gunicorn: the engine's certificate chain and key (project.tls; ``manage.py check``
    # fails, pacs.E007, when they are missing or do not match).
    certfile = os.environ.get("TLS_CERTIFICATE", "").strip() or None
    keyfile = os.environ.get("TLS_PRIVATE_KEY", "").strip() or None
    if not certfile or not keyfile:
        # Never fall back to plain HTTP when HTTPS was asked for.
        raise SystemExit("WEB_TLS=true needs TLS_CERTIFICATE and TLS_PRIVATE_KEY (pacs.E007)")

    def ssl_context(conf, default_ssl_context_factory):
        """TLS 1.2 or 1.3 only (RFC 8996 retires 1.0 and 1.1; BCP 195 / RFC 9325 section 3.1.1)."""
        context = default_ssl_context_factory()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.options |= ssl.OP_NO_COMPRESSION
        return context


# Application start and stop of the web process on the audit trail (DICOM PS3.15 A.5.3.1), by
# ``manage.py record_application_activity`` in a child process: the master itself never imports
# Django, so that a reload (HUP) gives the workers the code afresh.
def _record_activity(event: str, pid: int, *, wait: bool):
    import subprocess
    import sys
    from pathlib import Path

    command = [sys.executable, str(Path(__file__).resolve().parent / "manage.py"), "record_application_activity",
               "web", event, "--pid", str(pid)]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        return subprocess.run(command, stdout=subprocess.DEVNULL, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return None


def when_ready(server):
    """The master is listening: Application Start (not waited for: serving starts at once)."""
    server._audit_start = _record_activity("start", os.getpid(), wait=False)


def on_exit(server):
    """The master is exiting: Application Stop (waited for, at most 30 s)."""
    started = getattr(server, "_audit_start", None)
    if started is not None:
        started.wait(timeout=30)
    _record_activity("stop", os.getpid(), wait=True)
