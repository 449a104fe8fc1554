"""Health checks per process type: does the listener accept connections, does the
database answer, does the broker answer.  Answers carry check names and ok/failed only:
no patient data, no version details.

Used by the web ``/health/`` view (database + broker) and by ``manage.py health
web|mllp|dicom|worker`` (exit code 0 healthy, 1 not), the container healthchecks in
``docker/compose.yaml``.
"""

from __future__ import annotations

import socket
import ssl
import urllib.request

from django.conf import settings
from django.db import connection

from project.celery import app


def _local(host: str) -> str:
    """A listener bound to every interface is probed on the loopback."""
    return "127.0.0.1" if host in ("", "0.0.0.0") else ("::1" if host == "::" else host)


#: Calling AE title of the ``health dicom`` probe; its C-ECHOs are not counted as an interface.
HEALTHCHECK_AE_TITLE = "HEALTHCHECK"


def database() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone()[0] == 1
    except Exception:  # noqa: BLE001 - unhealthy, whatever the reason
        return False


def broker(timeout: float = 3.0) -> bool:
    from kombu import Connection

    try:
        with Connection(settings.CELERY_BROKER_URL, connect_timeout=timeout,
                        transport_options=getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {})) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
            if conn.transport.driver_type == "redis":
                conn.default_channel.client.ping()
        return True
    except Exception:  # noqa: BLE001
        return False


def tcp(host: str, port: int, timeout: float = 3.0) -> bool:
    """The listener accepts a TCP connection (MLLP: connect and close, nothing sent)."""
    try:
        with socket.create_connection((_local(host), port), timeout=timeout):
            return True
    except OSError:
        return False


def dicom_echo(host: str, port: int, called_ae_title: str, timeout: float = 5.0) -> bool:
    """A C-ECHO (Verification, PS3.4 Annex A) to the engine's AE answers Success."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=HEALTHCHECK_AE_TITLE)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    try:
        assoc = ae.associate(_local(host), port, ae_title=called_ae_title)
        if not assoc.is_established:
            return False
        try:
            status = assoc.send_c_echo()
            return bool(status) and int(status.Status) == 0
        finally:
            assoc.release()
    except Exception:  # noqa: BLE001
        return False
    finally:
        ae.shutdown()


def web(host: str, port: int, timeout: float = 5.0) -> bool:
    """The web process answers /health/: over HTTPS when gunicorn serves it (WEB_TLS).  The probe
    goes to the loopback, where the certificate's names do not apply: it checks that the process
    answers, not who it is."""
    scheme, context = "http", None
    if settings.WEB_TLS:
        scheme, context = "https", ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(f"{scheme}://{_local(host)}:{port}/health/", timeout=timeout,  # noqa: S310
                                    context=context) as response:
            return response.status == 200
    except Exception:  # noqa: BLE001
        return False


def worker(timeout: float = 3.0) -> bool:
    """At least one Celery worker answers a ping over the broker."""
    try:
        return bool(app.control.ping(timeout=timeout))
    except Exception:  # noqa: BLE001
        return False


def check(process: str, *, host: str | None = None, port: int | None = None, timeout: float = 3.0) -> dict[str, bool]:
    """{check name: ok} for a process type: web, mllp, dicom or worker."""
    results = {"database": database()}
    if process == "web":
        results["listener"] = web(host or "127.0.0.1", port or settings.WEB_PORT, timeout)
    elif process == "mllp":
        results["listener"] = tcp(host or settings.HL7_MLLP_HOST, port or settings.HL7_MLLP_PORT, timeout)
    elif process == "dicom":
        results["listener"] = dicom_echo(host or settings.DICOM_HOST, port or settings.DICOM_PORT,
                                         settings.DICOM_AE_TITLE, timeout)
    elif process == "worker":
        results["broker"] = broker(timeout)
        results["worker"] = results["broker"] and worker(timeout)
    elif process == "beat":
        results["broker"] = broker(timeout)
    else:
        raise ValueError(f"unknown process type {process!r}")
    return results
