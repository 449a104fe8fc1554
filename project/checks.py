"""System checks for the configuration (stable IDs, listed in README "Troubleshooting").

pacs.E001  an environment variable has a value that cannot be used
pacs.E002  DICOM_AE_TITLE is not a valid AE title (1-16 printable ASCII, no backslash)
pacs.E003  ACCESSION_NUMBER_FORMAT does not produce a valid AccessionNumber (SH, <= 16)
pacs.E004  DATABASE_URL names an engine other than PostgreSQL or SQLite
pacs.E005  CELERY_BROKER_URL names a transport other than redis or filesystem
pacs.E006  (deploy) DICOM_UNKNOWN_AE_FROM (or DICOM_ALLOW_UNKNOWN_AE=true) admits unknown calling AEs from everywhere
pacs.W001  (deploy) DICOM_UNKNOWN_AE_FROM admits unknown calling AEs from beyond the loopback
pacs.W003  (deploy) the database is SQLite
pacs.W004  DICOM_ALLOW_UNKNOWN_AE is set: it still works, DICOM_UNKNOWN_AE_FROM replaces it
pacs.W005  (deploy) SECRETS_ENCRYPTION_KEYS is unset (a generated key in VAR_DIR seals credentials)
pacs.E007  a TLS file (TLS_CERTIFICATE, TLS_PRIVATE_KEY, TLS_CA_CERTIFICATES) is missing, unreadable or
           does not match its key, or WEB_TLS is on without a certificate: no process starts so
pacs.W006  (deploy) a configured certificate is expired or expires within TLS_EXPIRY_WARNING_DAYS
pacs.W007  (deploy) the web is served over plain HTTP (neither WEB_TLS nor WEB_TRUSTED_PROXIES)
pacs.E008  SECRET_KEY is unset outside the embedded default (SQLite and the filesystem broker): no
           process starts so (project.secret_key)
pacs.E009  VIEWER_URL_TEMPLATE cannot be filled (unreadable, unknown placeholder), or WADO_RS_BASE_URL
           or DICOMWEB_BASE_URL is not an http(s) URL: the study links (worklist, RP OBX of the
           ORU^R01, DICOMweb RetrieveURL) would be missing or wrong
"""

from __future__ import annotations

import ssl

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.utils import timezone

from project import links, secret_key
from project.env import PROBLEMS
from project.peers import is_everywhere, is_valid_ae_title, network
from project.tls import TLSConfigurationError, certificate_expiries, server_context


@register(Tags.compatibility)
def check_environment(app_configs, **kwargs):
    errors = [
        Error(f"{p.name}={p.value!r} {p.message}.", hint="See .env.example for every setting.", id="pacs.E001")
        for p in PROBLEMS
    ]
    if not is_valid_ae_title(settings.DICOM_AE_TITLE):
        errors.append(
            Error(
                f"DICOM_AE_TITLE={settings.DICOM_AE_TITLE!r} is not a valid AE title.",
                hint="1 to 16 printable ASCII characters, no backslash (DICOM PS3.5 6.2, VR AE).",
                id="pacs.E002",
            )
        )
    if settings.SECRET_KEY_MISSING:
        errors.append(Error(secret_key.MISSING, hint="See README, Securing a deployment.", id="pacs.E008"))
    try:
        sample = settings.ACCESSION_NUMBER_FORMAT.format(n=99999999)
    except (KeyError, IndexError, ValueError) as exc:
        sample = None
        errors.append(
            Error(f"ACCESSION_NUMBER_FORMAT cannot be formatted: {exc}.", hint="Use {n} for the number.", id="pacs.E003")
        )
    if sample is not None and (len(sample) > 16 or "\\" in sample or not sample.isprintable()):
        errors.append(
            Error(
                f"ACCESSION_NUMBER_FORMAT gives {sample!r}, longer than 16 characters or not printable.",
                hint="AccessionNumber (0008,0050) is SH: at most 16 characters.",
                id="pacs.E003",
            )
        )
    engine = getattr(settings, "DATABASE_ENGINE_UNSUPPORTED", "")
    if engine:
        errors.append(Error(f"DATABASE_URL uses {engine}; only PostgreSQL and SQLite are supported.",
                            hint="Use postgres://user:password@host:5432/name.", id="pacs.E004"))
    scheme = settings.CELERY_BROKER_URL.split("://", 1)[0]
    if scheme not in {"redis", "rediss", "filesystem"}:
        errors.append(
            Error(
                f"CELERY_BROKER_URL scheme {scheme!r} is not supported.",
                hint="Use redis://host:6379/0, or leave it unset for the embedded filesystem broker.",
                id="pacs.E005",
            )
        )
    if settings.DICOM_ALLOW_UNKNOWN_AE_LEGACY is not None:
        errors.append(Warning(
            "DICOM_ALLOW_UNKNOWN_AE is read as DICOM_UNKNOWN_AE_FROM="
            + ("0.0.0.0/0,::/0 (everywhere)." if settings.DICOM_ALLOW_UNKNOWN_AE_LEGACY else "none."),
            hint="Replace it by DICOM_UNKNOWN_AE_FROM (see .env.example).", id="pacs.W004"))
    return errors


@register(Tags.security)
def check_tls_files(app_configs, **kwargs):
    """pacs.E007 at every start: a TLS set-up that cannot work stops the process here rather than
    at the first peer's handshake."""
    problems = []
    if settings.TLS_CERTIFICATE or settings.TLS_PRIVATE_KEY or settings.WEB_TLS:
        try:
            server_context("none")
        except TLSConfigurationError as exc:
            problems.append(("WEB_TLS=true: " if settings.WEB_TLS and not settings.TLS_CERTIFICATE else "") + str(exc))
    if settings.TLS_CA_CERTIFICATES:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=settings.TLS_CA_CERTIFICATES)
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"TLS_CA_CERTIFICATES={settings.TLS_CA_CERTIFICATES!r} cannot be loaded: {exc}")
    return [Error(f"{problem}.", hint="TLS_CERTIFICATE: the PEM certificate chain, TLS_PRIVATE_KEY: its PEM key "
                  "(unencrypted, readable by the engine's user), TLS_CA_CERTIFICATES: a PEM bundle "
                  "(README, Certificates).", id="pacs.E007") for problem in problems]


def tls_deployment_warnings() -> list[Warning]:
    """pacs.W006: certificates to renew; pacs.W007: the web without HTTPS."""
    now = timezone.now()
    warnings = [
        Warning(f"{expiry.describe(now)}.", hint="Renew it (README, Certificates); the alarm "
                "'TLS certificate expiry' stays open until then.", id="pacs.W006")
        for expiry in certificate_expiries() if expiry.not_after is not None and expiry.is_due(now)
    ]
    if not settings.WEB_TLS and not settings.WEB_TRUSTED_PROXIES:
        warnings.append(Warning(
            "The web is served over plain HTTP: passwords and session cookies cross the network in clear.",
            hint="Set WEB_TLS=true with TLS_CERTIFICATE and TLS_PRIVATE_KEY, or put a TLS-terminating reverse "
                 "proxy in front and list it in WEB_TRUSTED_PROXIES (README, TLS: the web).", id="pacs.W007"))
    return warnings


@register(Tags.security, deploy=True)
def check_deployment(app_configs, **kwargs):
    warnings = []
    unknown_from = settings.DICOM_UNKNOWN_AE_FROM
    declare = "Declare the modalities in DICOM_NODES or as DICOM nodes in the admin (README, Securing a deployment)."
    if is_everywhere(unknown_from):
        named = ("DICOM_ALLOW_UNKNOWN_AE=true" if settings.DICOM_ALLOW_UNKNOWN_AE_LEGACY
                 else f"DICOM_UNKNOWN_AE_FROM={','.join(unknown_from)}")
        warnings.append(Error(
            f"{named} admits any calling AE title from every address: anyone who reaches the DICOM port may "
            "read the Modality Worklist and send images.",
            hint=declare + " Leave DICOM_UNKNOWN_AE_FROM unset (loopback only) or set it to none.", id="pacs.E006"))
    elif not all(n is not None and n.is_loopback for n in map(network, unknown_from)):
        warnings.append(Warning(
            f"DICOM_UNKNOWN_AE_FROM={','.join(unknown_from)} admits unknown calling AE titles from beyond the "
            "loopback, with every service.", hint=declare, id="pacs.W001"))
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        warnings.append(
            Warning("The database is SQLite.", hint="Set DATABASE_URL=postgres://... for production.", id="pacs.W003")
        )
    if not settings.SECRETS_ENCRYPTION_KEYS:
        warnings.append(
            Warning(
                "SECRETS_ENCRYPTION_KEYS is unset: stored credentials are sealed with a key generated into VAR_DIR.",
                hint="Set SECRETS_ENCRYPTION_KEYS (python manage.py reencrypt_secrets --new-key prints a key; "
                     "with VAR_DIR/secrets.key already in use, list its key second and re-seal).",
                id="pacs.W005",
            )
        )
    return warnings + tls_deployment_warnings()


@register(Tags.compatibility)
def check_study_links(app_configs, **kwargs):
    """pacs.E009: a link setting no link can be made from (project.links) is refused at start,
    not discovered as links missing from the worklist and from the ORU^R01 (HL7 v2.5.1 2A.65 RP)."""
    errors = []
    problem = links.template_problem(settings.VIEWER_URL_TEMPLATE)
    if problem:
        errors.append(Error(f"VIEWER_URL_TEMPLATE {problem}.", hint="e.g. https://viewer.example/ohif/viewer?"
                            "StudyInstanceUIDs={StudyInstanceUID}", id="pacs.E009"))
    problem = links.base_url_problem(settings.WADO_RS_BASE_URL)
    if problem:
        errors.append(Error(f"WADO_RS_BASE_URL {problem}.", id="pacs.E009"))
    problem = links.base_url_problem(settings.DICOMWEB_BASE_URL)
    if problem:
        errors.append(Error(f"DICOMWEB_BASE_URL {problem}.", id="pacs.E009"))
    return errors
