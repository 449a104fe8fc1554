"""Certificates made for a test: a hospital CA, certificates it signs (the engine's, a modality's,
an EHR's, a VNA's), and one from a CA nobody trusts.  Written as PEM files into a directory.

    pki = TestPKI(tmp_path)
    engine = pki.issue("engine", dns=["localhost"], ips=["127.0.0.1"])
    modality = pki.issue("CT1")
    stranger = TestPKI(tmp_path / "other").issue("intruder")   # another, untrusted CA
    engine.cert, engine.key, pki.ca_file                          # paths
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    name: str
    cert: Path  # PEM certificate
    key: Path  # PEM private key (unencrypted)
    chain: Path  # certificate followed by the CA certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Hospital"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


class TestPKI:
    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "Test Hospital CA"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self._cert = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = self.directory / "ca.pem"
        self.ca_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, *, dns: list[str] | None = None, ips: list[str] | None = None,
              days: int = 365, expired: bool = False) -> Issued:
        """A certificate for server and client use, signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        start, end = (now - dt.timedelta(days=30), now - dt.timedelta(days=1)) if expired else (
            now - dt.timedelta(days=1), now + dt.timedelta(days=days))
        names = [x509.DNSName(d) for d in (dns or [])] + [x509.IPAddress(ipaddress.ip_address(i)) for i in (ips or [])]
        builder = (
            x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(self._cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        base = self.directory / common_name.replace("/", "_")
        issued = Issued(common_name, base.with_suffix(".crt"), base.with_suffix(".key"), base.with_suffix(".chain.pem"))
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, issued.key)
        issued.chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM)
                                 + self._cert.public_bytes(serialization.Encoding.PEM))
        return issued
