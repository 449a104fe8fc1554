"""TLS for every port, in and out: one place that builds the ``ssl.SSLContext`` of each side.

The profile is the one DICOM PS3.15 Annex B.9 ("BCP 195 TLS Secure Transport Connection
Profile") names, and HL7 over MLLP uses the same: TLS 1.2 or 1.3 only (RFC 8996 retires 1.0
and 1.1), OpenSSL's default cipher list at security level 2 (forward-secret AEAD suites first, no
RC4, no export or NULL suites: RFC 9325 section 4.2), compression off.

The files come from the environment (``.env.example``):

- ``TLS_CERTIFICATE`` / ``TLS_PRIVATE_KEY``: the engine's certificate chain and key (PEM), shown
  to peers by the TLS listeners and, when a peer asks for one, by the engine as a client;
- ``TLS_CA_CERTIFICATES``: the CA certificates (PEM bundle) trusted to sign peers' certificates:
  modalities' and EHRs' client certificates, and the VNA's and destinations' server
  certificates (unset: the system's trust store for outbound connections, no client
  certificates accepted inbound).

A listener asks for client certificates per port (``none``, ``optional`` or ``required``).
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtensionOID, NameOID
from django.conf import settings

CLIENT_CERTIFICATE_POLICIES = ("none", "optional", "required")
_VERIFY = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


class TLSConfigurationError(Exception):
    """A TLS file is missing, unreadable or does not match its key."""


def _harden(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    return context


def server_context(client_certificates: str = "none") -> ssl.SSLContext:
    """The context of a TLS listener: the engine's certificate, and the peers' certificates
    verified against TLS_CA_CERTIFICATES when ``client_certificates`` is optional or required."""
    if client_certificates not in _VERIFY:
        raise ValueError(f"client certificate policy {client_certificates!r}")
    if not settings.TLS_CERTIFICATE or not settings.TLS_PRIVATE_KEY:
        raise TLSConfigurationError("a TLS port needs TLS_CERTIFICATE and TLS_PRIVATE_KEY")
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    try:
        context.load_cert_chain(settings.TLS_CERTIFICATE, settings.TLS_PRIVATE_KEY)
        if client_certificates != "none":
            if not settings.TLS_CA_CERTIFICATES:
                raise TLSConfigurationError("client certificates need TLS_CA_CERTIFICATES")
            context.load_verify_locations(cafile=settings.TLS_CA_CERTIFICATES)
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigurationError(f"cannot load the TLS files: {exc}") from exc
    context.verify_mode = _VERIFY[client_certificates]
    return context


def client_context(*, ca_certificates: str | None = None, certificate: str | None = None,
                   private_key: str | None = None) -> ssl.SSLContext:
    """The context of an outbound TLS connection (a VNA, an ORU destination): the server's
    certificate verified against TLS_CA_CERTIFICATES (or the system's store) and its host name
    checked; the engine's certificate offered when the server asks for one.  A connection with
    files of its own (the audit record repository) names them; unnamed ones are the TLS_* ones."""
    ca_certificates = settings.TLS_CA_CERTIFICATES if ca_certificates is None else ca_certificates
    certificate = settings.TLS_CERTIFICATE if certificate is None else certificate
    private_key = settings.TLS_PRIVATE_KEY if private_key is None else private_key
    context = _harden(ssl.create_default_context(cafile=ca_certificates or None))
    if certificate and private_key:
        try:
            context.load_cert_chain(certificate, private_key)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigurationError(f"cannot load the TLS files: {exc}") from exc
    return context


@dataclass(frozen=True)
class PeerCertificate:
    """What a verified peer certificate says about who is calling (for matching a declared peer)."""

    common_name: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]

    def names(self) -> set[str]:
        return {n for n in (self.common_name, *self.dns_names, *self.ip_addresses) if n}


def peer_certificate(sock: ssl.SSLSocket) -> PeerCertificate | None:
    """The verified certificate the peer presented on this connection, or None."""
    der = sock.getpeercert(binary_form=True)
    if not der:
        return None
    cert = x509.load_der_x509_certificate(der)
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(a) for a in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    return PeerCertificate(str(common[0].value) if common else "", dns, ips)


def certificate_files() -> dict[str, str]:
    """The configured certificate files by setting name (for the expiry check)."""
    return {name: getattr(settings, name) for name in ("TLS_CERTIFICATE", "TLS_CA_CERTIFICATES")
            if getattr(settings, name)}


def not_valid_after(path: str | Path) -> list[tuple[str, dt.datetime]]:
    """(subject, expiry) of every certificate in a PEM file."""
    data = Path(path).read_bytes()
    return [(cert.subject.rfc4514_string(), cert.not_valid_after_utc) for cert in x509.load_pem_x509_certificates(data)]


@dataclass(frozen=True)
class CertificateExpiry:
    """One certificate of a configured file, or the file's problem when it cannot be read
    (then ``subject`` is empty and ``not_after`` None)."""

    setting: str
    subject: str
    not_after: dt.datetime | None
    problem: str = ""

    def seconds_left(self, now: dt.datetime) -> float | None:
        return None if self.not_after is None else (self.not_after - now).total_seconds()

    def is_due(self, now: dt.datetime) -> bool:
        """Unreadable, expired, or expiring within TLS_EXPIRY_WARNING_DAYS: to be renewed now."""
        left = self.seconds_left(now)
        return left is None or left <= settings.TLS_EXPIRY_WARNING_DAYS * 86400

    def describe(self, now: dt.datetime) -> str:
        left = self.seconds_left(now)
        if left is None:
            return f"{self.setting} {self.problem}"
        when = f"{self.not_after:%Y-%m-%d %H:%M} UTC"
        if left <= 0:
            return f"{self.setting}: the certificate {self.subject} expired on {when}"
        return f"{self.setting}: the certificate {self.subject} expires in {left / 86400:.0f} day(s), on {when}"


def certificate_expiries() -> list[CertificateExpiry]:
    """Every certificate of every configured file (``certificate_files()``) with its expiry; a
    file that is missing, unreadable or holds no PEM certificate is listed with its problem."""
    found: list[CertificateExpiry] = []
    for setting, path in certificate_files().items():
        try:
            certificates = not_valid_after(path)
        except (OSError, ValueError) as exc:
            found.append(CertificateExpiry(setting, "", None, f"cannot be read: {exc}"[:200]))
            continue
        found.extend(CertificateExpiry(setting, subject, after) for subject, after in certificates)
    return found
