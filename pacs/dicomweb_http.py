"""HTTP towards a DICOMweb VNA (a ``VnaDestination`` of kind ``stow``): what the STOW-RS sender
(``pacs.stow``, PS3.18 10.5) and the QIDO-RS / WADO-RS client (``pacs.qr_dicomweb``, PS3.18 10.6
and 10.4) share, so that both reach the same server the same way.

- The destination's ``url`` is the service's base URL (PS3.18 8.2: the resources are paths under
  it, ``{base}/studies`` ...).
- HTTP basic credentials, stored sealed (``project.encryption``); a sealed value no key in
  SECRETS_ENCRYPTION_KEYS opens is permanent: no retry opens it.
- Over https (TLS 1.2 or 1.3, the BCP 195 profile that PS3.15 B.9 names for DICOM) the server's
  certificate is verified against TLS_CA_CERTIFICATES when set (the system's store otherwise) and
  its host name checked; the engine's certificate (TLS_CERTIFICATE, TLS_PRIVATE_KEY) is presented
  when the server asks for a client certificate.  A server certificate that does not verify is
  permanent (no retry mends it until a certificate or the trusted CAs change); there is no
  fallback to http or to an unverified connection.
- Timeouts: 10 s to connect, 300 s between two reads.
- Failures: connection errors, a TLS handshake that fails for another reason, HTTP 408, 429 and
  5xx are ``TransientError``; other 4xx, unreadable TLS files and a refused certificate are
  ``PermanentError`` (the kinds of ``pacs.services.routing.sending``).  The messages name the
  base URL only, never a query string (a QIDO-RS query carries a PatientID, and these messages
  reach the logs).
"""

from __future__ import annotations

import ssl

import requests
from django.conf import settings

from pacs.services.routing.sending import PermanentError, TransientError
from project.encryption import Unreadable

TIMEOUT = (10, 300)
TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})


def base_url(destination) -> str:
    return destination.url.rstrip("/")


def tls_arguments() -> dict:
    """``requests``' verify and cert: the trusted CAs and the engine's client certificate."""
    own = (settings.TLS_CERTIFICATE, settings.TLS_PRIVATE_KEY) if settings.TLS_CERTIFICATE and settings.TLS_PRIVATE_KEY \
        else None
    return {"verify": settings.TLS_CA_CERTIFICATES or True, "cert": own}


def credentials(destination, service: str) -> tuple[str, str] | None:
    """The destination's HTTP basic credentials, None without a user name."""
    if isinstance(destination.username, Unreadable) or isinstance(destination.password, Unreadable):
        raise PermanentError(f"the stored {service} credentials cannot be opened with SECRETS_ENCRYPTION_KEYS")
    return (destination.username, destination.password) if destination.username else None


def refused_certificate(exc: requests.RequestException) -> str:
    """The verification error when the server's certificate was refused, else ''."""
    cause = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {cause.verify_message}"
        inner = [getattr(cause, "reason", None), *cause.args[:1], cause.__cause__, cause.__context__]
        cause = next((c for c in inner if isinstance(c, BaseException) and c is not cause), None)
    return ""


def send(destination, method: str, url: str, *, service: str, session: requests.Session | None = None,
         **kwargs) -> requests.Response:
    """One request to the destination, with its credentials, TLS and timeouts; a failure to get
    an answer raised as ``TransientError`` or ``PermanentError`` (module docstring).  The status
    is the caller's to read (``check_status``)."""
    auth = credentials(destination, service)
    try:
        return (session or requests).request(method, url, auth=auth, timeout=TIMEOUT, **tls_arguments(), **kwargs)
    except requests.exceptions.SSLError as exc:
        if refused := refused_certificate(exc):
            raise PermanentError(f"{service} to {destination.url}: the server's certificate was refused: {refused}") \
                from exc
        raise TransientError(f"{service} to {destination.url}: TLS handshake failed") from exc
    except requests.RequestException as exc:
        raise TransientError(f"{service} to {destination.url}: {type(exc).__name__}") from exc
    except OSError as exc:  # requests' own check of the files named in verify and cert
        raise PermanentError(f"{service} to {destination.url}: cannot load the TLS files: {exc}") from exc


def check_status(response: requests.Response, service: str, *, allowed=(), with_body: bool = True) -> None:
    """HTTP 408, 429, 5xx: ``TransientError``; any other 4xx or above not ``allowed``:
    ``PermanentError``, with the start of the answer's body unless ``with_body`` is false (an
    answer may repeat the query, and a query about a patient must not reach the logs)."""
    status = response.status_code
    if status in TRANSIENT_HTTP:
        raise TransientError(f"{service} HTTP {status}")
    if status >= 400 and status not in allowed:
        if not with_body:
            raise PermanentError(f"{service} HTTP {status}")
        raise PermanentError(f"{service} HTTP {status}: {excerpt(response)}")


def excerpt(response: requests.Response, size: int = 200) -> str:
    """The start of the answer's body as text, without reading the rest of a streamed answer."""
    try:
        head = next(response.iter_content(size), b"")
    except requests.RequestException:
        return ""
    return head[:size].decode("utf-8", "replace") if isinstance(head, bytes) else str(head)[:size]
