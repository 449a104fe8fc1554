"""Settings of the radiology workflow engine, read from the environment.

Every setting is listed with its default and meaning in ``.env.example``.  Bad values
never crash the import: they fall back to the default and are reported by the system
checks in ``project.checks`` (run at the start of every process and by
``manage.py check``).  With no environment at all the engine runs on a laptop:
SQLite and a filesystem Celery broker under ``var/``.
"""

from __future__ import annotations

import base64
import datetime
import os
import secrets
from pathlib import Path

import dj_database_url

from project import secret_key
from project.audit_repository import parse_url as parse_audit_repository_url
from project.delivery.destinations import entries as destination_entries
from project.delivery.destinations import parse_vna_entry
from project.env import env_bool, env_choice, env_float, env_int, env_list, env_str, record
from project.peers import network, parse_nodes


def _fernet_key_ok(key: str) -> bool:
    try:
        return len(base64.urlsafe_b64decode(key.encode())) == 32
    except (ValueError, TypeError):
        return False


BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var"))).resolve()

# --- Django core ---------------------------------------------------------------------------
# SECRET_KEY: see "Secret key" below (it depends on the database and broker settings).
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
WEB_PORT = env_int("WEB_PORT", 8000, minimum=1, maximum=65535)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # Failed sign-ins and lockouts (django-axes: its own tables and migrations; accounts.signin).
    "axes",
    "project.apps.ProjectConfig",
    "accounts.apps.AccountsConfig",
    "pacs.apps.PacsConfig",
    "ris.apps.RisConfig",
    "hl7gateway.apps.Hl7GatewayConfig",
    "worklist.apps.WorklistConfig",
    "monitoring.apps.MonitoringConfig",
    "audit.apps.AuditConfig",
    "audit_export.apps.AuditExportConfig",
]

MIDDLEWARE = [
    # First: drops X-Forwarded-Proto unless from WEB_TRUSTED_PROXIES; marks cookies Secure on HTTPS.
    "project.https.HttpsMiddleware",
    # Content-Security-Policy on every response, error pages included (project.csp).
    "project.csp.ContentSecurityPolicyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Ends a session idle for SESSION_IDLE_MINUTES or older than SESSION_MAX_HOURS (accounts.sessions).
    "accounts.sessions.IdleSessionMiddleware",
    # Who changes an account (its audit records, accounts.auth_audit): the signed-in user of the request.
    "accounts.auth_audit.AccountChangeActorMiddleware",
    # Login for every page but those marked @public (login, health, static); then default deny.
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "project.access.DefaultDenyMiddleware",
    # The signed-in user is the actor of the audit records of every change a request makes.
    "project.auditing.web.AuditActorMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: turns a sign-in refused for a lockout into the "locked" page (django-axes).
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ------------------------------------------------------------------------------
# DATABASE_URL unset: SQLite under var/ (laptop default).  Production and the test suite:
# postgres://user:password@host:5432/name.
DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'pacs.sqlite3'}")
try:
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0))
except Exception as exc:  # noqa: BLE001 - any parse failure is reported by project.checks
    record("DATABASE_URL", DATABASE_URL, f"cannot be parsed: {exc}")
    _db = dj_database_url.parse(f"sqlite:///{VAR_DIR / 'pacs.sqlite3'}")
# An engine we do not support is reported by check pacs.E004; SQLite stands in so that the
# checks can run at all (importing, say, the MySQL backend would fail before them).
DATABASE_ENGINE_UNSUPPORTED = ""
if not (_db["ENGINE"].endswith("postgresql") or _db["ENGINE"].endswith("sqlite3")):
    DATABASE_ENGINE_UNSUPPORTED = _db["ENGINE"]
    _db = dj_database_url.parse(f"sqlite:///{VAR_DIR / 'pacs.sqlite3'}")
if _db["ENGINE"].endswith("postgresql"):
    # Persist before acknowledging: every commit waits for the WAL flush, so an AA or a C-STORE
    # Success is never sent for a change that a crash could still lose.
    _db.setdefault("OPTIONS", {})["options"] = "-c synchronous_commit=on"
    _db["CONN_HEALTH_CHECKS"] = True
elif _db["ENGINE"].endswith("sqlite3"):
    _db["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=30000;",
    }
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Celery --------------------------------------------------------------------------------
# CELERY_BROKER_URL unset: kombu's filesystem transport under var/broker (no server needed,
# still a real worker process).  Production and tests: redis://host:6379/0.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
BROKER_DIR = VAR_DIR / "broker"
if CELERY_BROKER_URL.startswith("filesystem://"):
    for _sub in ("queue", "processed", "control"):
        (BROKER_DIR / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
else:
    # Redis: redeliver a task whose worker died only after this many seconds; every
    # countdown we use is far below it (a longer countdown would be delivered twice).
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=60)}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ALWAYS_EAGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery's Django fixup closes the database connection before and after EVERY task unless
# this is set: a new PostgreSQL backend per task (its cost: bench/RESULTS.md, "ORU delivery").
# Instead, project.celery closes unusable or obsolete connections at task
# boundaries, as Django does between requests (CONN_MAX_AGE, CONN_HEALTH_CHECKS).
CELERY_DB_REUSE_MAX = 1000
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE: dict = {}

# --- Secret key (project.secret_key) ------------------------------------------------------------
# Never a public fallback.  On the embedded default (SQLite and the filesystem broker) an unset
# SECRET_KEY is generated once into VAR_DIR/secret.key; elsewhere an unset one stops every
# process (check pacs.E008, project.wsgi, the Celery worker and beat).  The throw-away key below
# only lets this module load so that the checks can name the problem; it is never persisted.
EMBEDDED_DEFAULT = _db["ENGINE"].endswith("sqlite3") and CELERY_BROKER_URL.startswith("filesystem://")
SECRET_KEY = env_str("SECRET_KEY", "")
SECRET_KEY_MISSING = False
if not SECRET_KEY:
    if EMBEDDED_DEFAULT:
        SECRET_KEY = secret_key.generated(VAR_DIR)
    else:
        SECRET_KEY, SECRET_KEY_MISSING = secrets.token_urlsafe(50), True

# --- Identifiers ---------------------------------------------------------------------------
# AccessionNumber (0008,0050) is SH: at most 16 characters.  {n} is the sequence value.
ACCESSION_NUMBER_FORMAT = env_str("ACCESSION_NUMBER_FORMAT", "RAD{n:08d}")
# Issuer of accession numbers we assign (IssuerOfAccessionNumberSequence LocalNamespaceEntityID).
ACCESSION_NUMBER_ISSUER = env_str("ACCESSION_NUMBER_ISSUER", "PACS")

# --- HL7 / MLLP ----------------------------------------------------------------------------
HL7_MLLP_HOST = env_str("HL7_MLLP_HOST", "0.0.0.0")
HL7_MLLP_PORT = env_int("HL7_MLLP_PORT", 2575, minimum=0, maximum=65535)
# MLLP over TLS (hl7gateway.server; no IANA port exists for it): on by default at 2576 once the
# engine has a certificate (TLS_CERTIFICATE); 0 = off.  Client certificates: none, optional, required.
HL7_MLLP_TLS_PORT = env_int("HL7_MLLP_TLS_PORT", 2576 if env_str("TLS_CERTIFICATE", "") else 0, minimum=0,
                            maximum=65535)
HL7_MLLP_TLS_CLIENT_CERTIFICATES = env_str("HL7_MLLP_TLS_CLIENT_CERTIFICATES", "none").strip().lower()
HL7_MAX_FRAME_BYTES = env_int("HL7_MAX_FRAME_BYTES", 16 * 1024 * 1024, minimum=1024)
HL7_IDLE_TIMEOUT_SECONDS = env_float("HL7_IDLE_TIMEOUT_SECONDS", 300.0, minimum=1.0)
HL7_MAX_CONNECTIONS = env_int("HL7_MAX_CONNECTIONS", 100, minimum=1)
# Connections one source address may hold at once (idle ones included), and the time a whole
# message may take to arrive once its first byte came (a slow sender is cut at this deadline).
HL7_MAX_CONNECTIONS_PER_ADDRESS = env_int("HL7_MAX_CONNECTIONS_PER_ADDRESS", 8, minimum=1)
HL7_MESSAGE_DEADLINE_SECONDS = env_float("HL7_MESSAGE_DEADLINE_SECONDS", 60.0, minimum=0.1)
# Structure one message may carry (hl7gateway.limits): more is answered AR before parsing.
HL7_MAX_SEGMENTS = env_int("HL7_MAX_SEGMENTS", 1000, minimum=10)
HL7_MAX_ORDER_GROUPS = env_int("HL7_MAX_ORDER_GROUPS", 50, minimum=1)
HL7_MAX_PID3_REPETITIONS = env_int("HL7_MAX_PID3_REPETITIONS", 20, minimum=1)
HL7_DEFAULT_CHARSET = env_choice("HL7_DEFAULT_CHARSET", "UNICODE UTF-8", {"UNICODE UTF-8", "8859/1", "ASCII"})
# Declared senders (hl7gateway.senders; also in the admin): APP^FACILITY@address-or-CIDR[:kinds],...
# kinds orders+patients+merges.  Undeclared senders are admitted only from HL7_UNDECLARED_SENDERS_FROM
# (addresses or CIDR networks; "none": from nowhere).  The declared senders are re-read every
# HL7_SENDERS_REFRESH_SECONDS; refused messages past HL7_REFUSED_LOG_LIMIT per address and hour
# are only counted.
HL7_SENDERS = env_str("HL7_SENDERS", "")
HL7_UNDECLARED_SENDERS_FROM = env_list("HL7_UNDECLARED_SENDERS_FROM", ["127.0.0.1", "::1"])
if [e.lower() for e in HL7_UNDECLARED_SENDERS_FROM] == ["none"]:
    HL7_UNDECLARED_SENDERS_FROM = []
HL7_SENDERS_REFRESH_SECONDS = env_float("HL7_SENDERS_REFRESH_SECONDS", 10.0, minimum=0.0)
HL7_REFUSED_LOG_LIMIT = env_int("HL7_REFUSED_LOG_LIMIT", 100, minimum=0)
HL7_RECEIVING_APPLICATION = env_str("HL7_RECEIVING_APPLICATION", "PACS")
HL7_RECEIVING_FACILITY = env_str("HL7_RECEIVING_FACILITY", "RADIOLOGY")
# ORM^O01 has no station AE title (OMI has IPC-9): site rule MODALITY=AE,... e.g. "CT=CT1,MR=MR1".
HL7_STATION_AE_BY_MODALITY = env_str("HL7_STATION_AE_BY_MODALITY", "")
# Outbound HL7 destinations, each taking the kinds of message its messages= names (results,
# order status, charges, filler orders): name=mllp://host:port,... (also configurable in the admin).
HL7_ORU_DESTINATIONS = env_str("HL7_ORU_DESTINATIONS", "")
HL7_ORU_VERSION = env_choice("HL7_ORU_VERSION", "2.5.1", {"2.5.1", "2.3.1"})
# Charge posting (DFT^P03, IHE RAD-35) to destinations with messages=charges: which charges a
# procedure code posts -- technical (exam complete), professional (final report), both, or none;
# per-code overrides CODE=kinds;CODE=kinds (checked at start, hl7gateway.E105).
CHARGE_POSTING = env_str("CHARGE_POSTING", "technical,professional")
CHARGE_POSTING_BY_CODE = env_str("CHARGE_POSTING_BY_CODE", "")
# Outbox delivery (hl7gateway.outbox), the same for every kind of message: timeouts, AE
# attempts before failing, backoff with jitter (capped far below the Redis visibility timeout,
# else Redis redelivers the task), the sweep that re-queues rows no worker picked up, and how
# long a dispatched row may wait before it is re-queued.
HL7_ORU_CONNECT_TIMEOUT_SECONDS = env_float("HL7_ORU_CONNECT_TIMEOUT_SECONDS", 10.0, minimum=0.1)
HL7_ORU_ACK_TIMEOUT_SECONDS = env_float("HL7_ORU_ACK_TIMEOUT_SECONDS", 30.0, minimum=0.1)
HL7_ORU_MAX_ATTEMPTS = env_int("HL7_ORU_MAX_ATTEMPTS", 8, minimum=1)
HL7_ORU_RETRY_BASE_SECONDS = env_float("HL7_ORU_RETRY_BASE_SECONDS", 5.0, minimum=0.01)
HL7_ORU_RETRY_MAX_SECONDS = env_float("HL7_ORU_RETRY_MAX_SECONDS", 600.0, minimum=0.01)
HL7_ORU_SWEEP_SECONDS = env_float("HL7_ORU_SWEEP_SECONDS", 15.0, minimum=0.5)
HL7_ORU_REQUEUE_AFTER_SECONDS = env_float("HL7_ORU_REQUEUE_AFTER_SECONDS", 60.0, minimum=0.5)
# Due messages of one destination a worker takes along in one task, over one connection.
HL7_ORU_BATCH_SIZE = env_int("HL7_ORU_BATCH_SIZE", 50, minimum=1, maximum=1000)
CELERY_BEAT_SCHEDULE["hl7gateway.sweep_outbound"] = {
    "task": "hl7gateway.sweep_outbound", "schedule": HL7_ORU_SWEEP_SECONDS,
}

# --- DICOM ---------------------------------------------------------------------------------
DICOM_HOST = env_str("DICOM_HOST", "0.0.0.0")
DICOM_PORT = env_int("DICOM_PORT", 11112, minimum=0, maximum=65535)
DICOM_AE_TITLE = env_str("DICOM_AE_TITLE", "PACS")
# Declared peers (project.peers): AE@HOST:GRANTS, synced into DicomNode rows when the listener
# starts (pacs.services.peers.sync_environment_nodes).
DICOM_NODES = env_str("DICOM_NODES", "")
DICOM_NODES_DECLARED, _node_problems = parse_nodes(DICOM_NODES)
for _entry, _problem in _node_problems:
    record("DICOM_NODES", _entry, _problem)
# Source addresses/networks from which a calling AE title that is no DICOM node is admitted
# (with every service); "none" admits unknown AEs from nowhere.  Only 127.0.0.1 and ::1 by
# default (not all of 127.0.0.0/8), so that a first try from the same machine works.
DICOM_UNKNOWN_AE_FROM = env_list("DICOM_UNKNOWN_AE_FROM", ["127.0.0.1", "::1"])
# The former on/off switch, still read: true = from everywhere, false = from nowhere.
DICOM_ALLOW_UNKNOWN_AE_LEGACY = env_bool("DICOM_ALLOW_UNKNOWN_AE", None)
if DICOM_ALLOW_UNKNOWN_AE_LEGACY is not None:
    if os.environ.get("DICOM_UNKNOWN_AE_FROM", "").strip():
        record("DICOM_ALLOW_UNKNOWN_AE", str(DICOM_ALLOW_UNKNOWN_AE_LEGACY).lower(),
               "is replaced by DICOM_UNKNOWN_AE_FROM, which is also set; remove DICOM_ALLOW_UNKNOWN_AE")
    else:
        DICOM_UNKNOWN_AE_FROM = ["0.0.0.0/0", "::/0"] if DICOM_ALLOW_UNKNOWN_AE_LEGACY else []
if [e.lower() for e in DICOM_UNKNOWN_AE_FROM] == ["none"]:
    DICOM_UNKNOWN_AE_FROM = []
for _entry in DICOM_UNKNOWN_AE_FROM:
    if network(_entry) is None:  # left in the list, where it matches no address
        record("DICOM_UNKNOWN_AE_FROM", _entry, "is neither an IP address nor a CIDR network (or the word none)")
DICOM_MAX_ASSOCIATIONS = env_int("DICOM_MAX_ASSOCIATIONS", 32, minimum=1)
DICOM_ACSE_TIMEOUT = env_float("DICOM_ACSE_TIMEOUT", 30.0, minimum=1.0)
DICOM_DIMSE_TIMEOUT = env_float("DICOM_DIMSE_TIMEOUT", 60.0, minimum=1.0)
DICOM_NETWORK_TIMEOUT = env_float("DICOM_NETWORK_TIMEOUT", 60.0, minimum=1.0)
DICOM_MAX_PDU = env_int("DICOM_MAX_PDU", 262144, minimum=0)
# Listener limits (pacs.dimse.acceptor): connections that have not yet sent their whole
# A-ASSOCIATE-RQ, per source address and in all; the largest data set of a request other
# than C-STORE; the slowest average rate at which a C-STORE data set extends its deadline.
DICOM_MAX_PENDING_CONNECTIONS = env_int("DICOM_MAX_PENDING_CONNECTIONS", 64, minimum=1)
DICOM_MAX_PENDING_PER_ADDRESS = env_int("DICOM_MAX_PENDING_PER_ADDRESS", 8, minimum=1)
DICOM_MAX_DATASET_SIZE = env_int("DICOM_MAX_DATASET_SIZE", 1048576, minimum=1024)
DICOM_MIN_RECEIVE_RATE = env_int("DICOM_MIN_RECEIVE_RATE", 65536, minimum=0)
MWL_PATIENT_NAME_CASE_INSENSITIVE = env_bool("MWL_PATIENT_NAME_CASE_INSENSITIVE", True)
MWL_FILTER_BY_CALLING_AE = env_bool("MWL_FILTER_BY_CALLING_AE", False)
MWL_MAX_RESULTS = env_int("MWL_MAX_RESULTS", 500, minimum=1)
# Query/Retrieve C-FIND (PS3.4 Annex C): answers beyond this are cut (logged); PatientName matched
# without regard to case (C-FIND and QIDO-RS: the one search of the image index).
QR_MAX_RESULTS = env_int("QR_MAX_RESULTS", 1000, minimum=1)
QR_PATIENT_NAME_CASE_INSENSITIVE = env_bool("QR_PATIENT_NAME_CASE_INSENSITIVE", True)
# Database connections kept open for the DICOM handlers (pacs.dimse.db), shared by all associations.
DICOM_DB_CONNECTIONS = env_int("DICOM_DB_CONNECTIONS", 8, minimum=1)

# --- TLS (project.tls: BCP 195 profile, TLS 1.2 or 1.3) ----------------------------------------------
# The engine's certificate chain and private key (PEM files), and the CA certificates that sign
# peers' certificates.  The TLS listeners (DICOM_TLS_PORT, HL7_MLLP_TLS_PORT) run when a
# certificate is set.
TLS_CERTIFICATE = env_str("TLS_CERTIFICATE", "")
TLS_PRIVATE_KEY = env_str("TLS_PRIVATE_KEY", "")
TLS_CA_CERTIFICATES = env_str("TLS_CA_CERTIFICATES", "")
# A certificate that expires within this many days raises an alarm (and a deploy warning).
TLS_EXPIRY_WARNING_DAYS = env_int("TLS_EXPIRY_WARNING_DAYS", 30, minimum=1)
# The DICOM TLS port (PS3.15 B.9; 2762 is IANA's dicom-tls; 0 = none), opened beside DICOM_PORT
# when TLS_CERTIFICATE is set, and whether it asks for client certificates (verified against
# TLS_CA_CERTIFICATES): required by default when a CA is configured, else none.
DICOM_TLS_PORT = env_int("DICOM_TLS_PORT", 2762, minimum=0, maximum=65535)
DICOM_TLS_CLIENT_CERTIFICATES = env_choice("DICOM_TLS_CLIENT_CERTIFICATES",
                                           "required" if TLS_CA_CERTIFICATES else "none",
                                           {"none", "optional", "required"})

# --- Audit Record Repository (audit_export: IHE ATNA, DICOM audit messages over syslog) ---------
# syslog+tls://host:6514 (RFC 5425), syslog+tcp://host:601 or syslog+udp://host:514 (RFC 5426);
# empty = the audit trail is kept here only.  AUDIT_SOURCE_ID is the AuditSourceID of every message
# (PS3.15 A.5.2.3) and the syslog APP-NAME.  Over TLS the repository's certificate is verified
# against AUDIT_REPOSITORY_CA_CERTIFICATES and the engine shows AUDIT_REPOSITORY_CERTIFICATE when
# asked (defaults: the TLS_* files).
AUDIT_REPOSITORY_URL = env_str("AUDIT_REPOSITORY_URL", "")
if AUDIT_REPOSITORY_URL:
    try:
        parse_audit_repository_url(AUDIT_REPOSITORY_URL)
    except ValueError as _exc:
        record("AUDIT_REPOSITORY_URL", AUDIT_REPOSITORY_URL, str(_exc))
        AUDIT_REPOSITORY_URL = ""
AUDIT_SOURCE_ID = env_str("AUDIT_SOURCE_ID", DICOM_AE_TITLE)
AUDIT_REPOSITORY_CA_CERTIFICATES = env_str("AUDIT_REPOSITORY_CA_CERTIFICATES", TLS_CA_CERTIFICATES)
AUDIT_REPOSITORY_CERTIFICATE = env_str("AUDIT_REPOSITORY_CERTIFICATE", TLS_CERTIFICATE)
AUDIT_REPOSITORY_PRIVATE_KEY = env_str("AUDIT_REPOSITORY_PRIVATE_KEY", TLS_PRIVATE_KEY)
# Connecting, the TLS handshake, and the repository acknowledging a batch must each end within this.
AUDIT_REPOSITORY_TIMEOUT_SECONDS = env_float("AUDIT_REPOSITORY_TIMEOUT_SECONDS", 10.0, minimum=0.1)
# The export (audit_export.export) seals and sends what is after the repository's cursor this often.
AUDIT_EXPORT_SECONDS = env_float("AUDIT_EXPORT_SECONDS", 5.0, minimum=0.5)

# --- Images and the VNA --------------------------------------------------------------------
STORAGE_DIR = Path(env_str("STORAGE_DIR", str(VAR_DIR / "storage"))).resolve()
STUDY_QUIET_PERIOD_SECONDS = env_int("STUDY_QUIET_PERIOD_SECONDS", 60, minimum=1)
# Keys that seal stored credentials (project.encryption): comma-separated Fernet keys, the first seals,
# all open.  Unset: a key generated once into VAR_DIR/secrets.key.
SECRETS_ENCRYPTION_KEYS = env_list("SECRETS_ENCRYPTION_KEYS", [])
if not all(_fernet_key_ok(k) for k in SECRETS_ENCRYPTION_KEYS):
    # The value itself is a secret: the problem is named, the value is not repeated.
    record("SECRETS_ENCRYPTION_KEYS", "(not shown)", "holds a value that is not a Fernet key (32 url-safe base64 bytes)")
    SECRETS_ENCRYPTION_KEYS = [k for k in SECRETS_ENCRYPTION_KEYS if _fernet_key_ok(k)]
# A C-STORE of a stored SOP Instance UID with other content (pacs.services.resends): "keep" the
# stored version, "replace" it, or "reject" the resend; an identical resend is always Success.
STORE_OVERWRITE_POLICY = env_choice("STORE_OVERWRITE_POLICY", "keep", {"keep", "replace", "reject"})
VNA_DESTINATIONS = env_str("VNA_DESTINATIONS", "")
for _entry in destination_entries(VNA_DESTINATIONS):
    # The router's own parser (project.delivery.destinations); a bad entry is reported as pacs.E001.
    try:
        parse_vna_entry(_entry)
    except ValueError:
        record("VNA_DESTINATIONS", _entry, "is neither dicom://AE@host:port nor stow+http(s)://host:port/path "
               "(optionally ?adt=mllp://host:port)")
ARCHIVE_RETENTION_DAYS = env_int("ARCHIVE_RETENTION_DAYS", 0, minimum=0)
# A purged study retrieved by a client (WADO-RS, WADO-URI, C-MOVE, C-GET) is fetched back from the
# VNA (pacs.services.recall): the request waits up to RECALL_WAIT_SECONDS for it (0: answers at
# once), then is told to retry (DICOMweb: 503 with Retry-After: RECALL_RETRY_AFTER_SECONDS, or
# until the recall's next attempt; Q/R: 0xA702 with an ErrorComment).
RECALL_WAIT_SECONDS = env_float("RECALL_WAIT_SECONDS", 3.0, minimum=0.0)
RECALL_RETRY_AFTER_SECONDS = env_int("RECALL_RETRY_AFTER_SECONDS", 10, minimum=1)
# VNA transfers: attempts, exponential backoff with jitter (capped below the Redis visibility
# timeout, else Redis redelivers the task), the lease a worker holds a transfer for, and how long
# to wait for the storage commitment N-EVENT-REPORT.
TRANSFER_MAX_ATTEMPTS = env_int("TRANSFER_MAX_ATTEMPTS", 10, minimum=1)
TRANSFER_RETRY_BASE_SECONDS = env_float("TRANSFER_RETRY_BASE_SECONDS", 10.0, minimum=0.1)
TRANSFER_RETRY_MAX_SECONDS = env_float("TRANSFER_RETRY_MAX_SECONDS", 900.0, minimum=1.0)
TRANSFER_LEASE_SECONDS = env_int("TRANSFER_LEASE_SECONDS", 300, minimum=2)
STORAGE_COMMITMENT_TIMEOUT_SECONDS = env_int("STORAGE_COMMITMENT_TIMEOUT_SECONDS", 600, minimum=1)
IMAGING_SWEEP_SECONDS = env_float("IMAGING_SWEEP_SECONDS", 10.0, minimum=1.0)
# Who sends C-STORE to a DICOM VNA: "engine" (pacs.dimse.requestor, in the worker) or "dcmtk" (/usr/bin/storescu).
VNA_DICOM_SENDER = env_choice("VNA_DICOM_SENDER", "engine", {"engine", "dcmtk"})
# Relevant priors of a new order (pacs.services.priors): found in the index and by C-FIND in every
# DICOM VNA, under every identifier the patient has had; chosen by PRIORS_MATCH, within
# PRIORS_MAX_YEARS, at most PRIORS_MAX_COUNT, newest first; fetched by C-MOVE with the transfers'
# retries (TRANSFER_*).  PRIORS_ENABLED off: no prior is looked for.
# PRIORS_MATCH (pacs.services.prior_relevance): "modality" (a modality of the order's steps among
# the prior's ModalitiesInStudy), "body_part" (the order's body part and the prior's share a
# region), "modality_or_body_part", "modality_and_body_part", or "any" (every study).  Body parts
# are BodyPartExamined (0018,0015) defined terms (PS3.3 C.7.3.1; PS3.16 Annex L, the regions of
# CID 4031 Common Anatomic Regions): a prior's from its series (SERIES-level C-FIND at the VNA),
# else its StudyDescription; the order's from PRIORS_BODY_PARTS, the procedure code (OBR-4.1) to
# its body parts, "CODE=PART[+PART],...", e.g. "71250=CHEST,74177=ABDOMEN+PELVIS", else the terms
# its description names (OBR-4.2).  An order whose body part is not known is matched by modality.
PRIORS_ENABLED = env_bool("PRIORS_ENABLED", True)
PRIORS_MATCH = env_choice("PRIORS_MATCH", "modality", {"modality", "body_part", "modality_or_body_part",
                                                       "modality_and_body_part", "any"})
PRIORS_BODY_PARTS: dict[str, tuple[str, ...]] = {}
for _entry in env_list("PRIORS_BODY_PARTS", []):
    _code, _sep, _parts = _entry.partition("=")
    _terms = tuple(p.strip().upper() for p in _parts.split("+") if p.strip())
    if not _sep or not _code.strip() or not _terms or not all(
            len(t) <= 16 and t.replace("_", "").replace(" ", "").isalnum() for t in _terms):
        record("PRIORS_BODY_PARTS", _entry, "is not CODE=PART[+PART] (BodyPartExamined defined terms, e.g. CHEST)")
        continue
    PRIORS_BODY_PARTS[_code.strip().upper()] = _terms
PRIORS_MAX_YEARS = env_int("PRIORS_MAX_YEARS", 5, minimum=1)
PRIORS_MAX_COUNT = env_int("PRIORS_MAX_COUNT", 3, minimum=1)
CELERY_BEAT_SCHEDULE.update({
    # Quiet-period completion, re-queue of transfers no worker holds, commitment timeouts.
    "pacs.imaging_sweep": {"task": "pacs.imaging_sweep", "schedule": IMAGING_SWEEP_SECONDS},
    # Local copies of archived studies older than ARCHIVE_RETENTION_DAYS (0: never).
    "pacs.purge_archived": {"task": "pacs.purge_archived", "schedule": 3600.0},
})

# --- Reading worklist and reports ----------------------------------------------------------
READING_CLAIM_TIMEOUT_MINUTES = env_int("READING_CLAIM_TIMEOUT_MINUTES", 30, minimum=1)
# Close idle reading claims once a minute (worklist.tasks; claims are also checked on every claim).
CELERY_BEAT_SCHEDULE["worklist.expire_idle_claims"] = {"task": "worklist.expire_idle_claims", "schedule": 60.0}
# A site's own viewer: when set, the study page's "Open images" link is this template filled in
# (project.links) instead of the built-in viewer.
VIEWER_URL_TEMPLATE = env_str("VIEWER_URL_TEMPLATE", "")
# The built-in viewer (worklist.ohif: OHIF from its npm package, ``manage.py install_viewer``) lives
# here; without it installed (and without VIEWER_URL_TEMPLATE) the study page offers no viewer.
VIEWER_DIR = Path(env_str("VIEWER_DIR", str(VAR_DIR / "viewer"))).resolve()
# At most this many of the patient's other studies held here open beside the study, newest first.
VIEWER_PRIOR_STUDIES = env_int("VIEWER_PRIOR_STUDIES", 5, minimum=0)
# DICOMweb base URL of the studies' WADO-RS resources ({base}/studies/{StudyInstanceUID}, PS3.18
# 10.4.1), for the RP OBX of an ORU^R01 (destinations with links=wado); empty: no such link.
WADO_RS_BASE_URL = env_str("WADO_RS_BASE_URL", "")

# --- DICOMweb (pacs.dicomweb, PS3.18) ------------------------------------------------------
# The public address of /dicomweb/ (e.g. https://pacs.example/dicomweb) in the RetrieveURL and
# BulkDataURI of answers; empty: the address each request came to.
DICOMWEB_BASE_URL = env_str("DICOMWEB_BASE_URL", "")
# How long a signed study link (project.links.sign_study_link) grants DICOMweb on its study.
DICOMWEB_LINK_MAX_AGE_MINUTES = env_int("DICOMWEB_LINK_MAX_AGE_MINUTES", 60, minimum=1)
# At most this many results per QIDO-RS search (a larger limit is lowered to it, with a Warning).
DICOMWEB_QIDO_MAX_RESULTS = env_int("DICOMWEB_QIDO_MAX_RESULTS", 1000, minimum=1)
# A QIDO-RS search still running after this many seconds is cancelled and answered 503 (PostgreSQL).
DICOMWEB_QIDO_TIMEOUT_SECONDS = env_float("DICOMWEB_QIDO_TIMEOUT_SECONDS", 30.0, minimum=0.1)
# The ORU^R01's WADO-RS link (links=wado) carries a signed study grant (?access_token=...), so that
# the EHR opens the study without an account, for DICOMWEB_LINK_MAX_AGE_MINUTES after the report.
DICOMWEB_ORU_SIGNED_LINKS = env_bool("DICOMWEB_ORU_SIGNED_LINKS", False)
# Browser origins (scheme://host[:port]) of web viewers allowed to call DICOMweb (CORS); empty: none.
DICOMWEB_CORS_ORIGINS = env_list("DICOMWEB_CORS_ORIGINS", [])

# --- Monitoring and alarms (monitoring app) ------------------------------------------------
# Alarm rules live in the database (admin); the beat task checks them every ALARM_CHECK_SECONDS.
ALARM_CHECK_SECONDS = env_float("ALARM_CHECK_SECONDS", 60.0, minimum=5.0)
CELERY_BEAT_SCHEDULE["monitoring.evaluate_alarms"] = {"task": "monitoring.evaluate_alarms", "schedule": ALARM_CHECK_SECONDS}
ALARM_EMAIL_FROM = env_str("ALARM_EMAIL_FROM", "pacs-alarms@localhost")
ALARM_EMAIL_SUBJECT_PREFIX = env_str("ALARM_EMAIL_SUBJECT_PREFIX", "[PACS alarm] ")
ALARM_WEBHOOK_TIMEOUT_SECONDS = env_float("ALARM_WEBHOOK_TIMEOUT_SECONDS", 5.0, minimum=0.1)
ALARM_SOURCE_NAME = env_str("ALARM_SOURCE_NAME", "pacs")
# Hand-offs left dangling (monitoring.selectors, the alarms of the same names, the console):
# a declared modality silent while steps are scheduled for it; a storage commitment request
# unanswered (above STORAGE_COMMITMENT_TIMEOUT_SECONDS, so one re-request has had its chance);
# a STAT study ready to read without a final report; a final report not acknowledged by a
# destination that takes results.
ALARM_MODALITY_SILENCE_MINUTES = env_int("ALARM_MODALITY_SILENCE_MINUTES", 60, minimum=1)
ALARM_STORAGE_COMMITMENT_MINUTES = env_int("ALARM_STORAGE_COMMITMENT_MINUTES", 30, minimum=1)
ALARM_STAT_UNREAD_MINUTES = env_int("ALARM_STAT_UNREAD_MINUTES", 60, minimum=1)
ALARM_ORU_UNDELIVERED_MINUTES = env_int("ALARM_ORU_UNDELIVERED_MINUTES", 30, minimum=1)
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1, maximum=65535)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = env_float("EMAIL_TIMEOUT", 10.0, minimum=0.1)
# /metrics (Prometheus): answered only to these client addresses or networks (CIDR), or to a
# request with "Authorization: Bearer <METRICS_BEARER_TOKEN>" when that is set.
METRICS_ALLOWED_IPS = env_list("METRICS_ALLOWED_IPS", ["127.0.0.1", "::1"])
METRICS_BEARER_TOKEN = env_str("METRICS_BEARER_TOKEN", "")

# --- Audit trail (audit app; IHE ATNA, DICOM PS3.15 A.5) -----------------------------------------
# Off only to measure what auditing costs (bench): audit.trail.record / record_soon then write nothing.
AUDIT_ENABLED = env_bool("AUDIT_ENABLED", True)
# Records older than this many days are purged daily, leaving an anchor record (0: kept for ever).
# HIPAA keeps required documentation six years (45 CFR 164.316(b)(2)).
AUDIT_RETENTION_DAYS = env_int("AUDIT_RETENTION_DAYS", 2190, minimum=0)
# The sealer (audit.chain.seal) chains new records this often.
AUDIT_SEAL_SECONDS = env_float("AUDIT_SEAL_SECONDS", 5.0, minimum=0.5)
# Records of reads waiting for the in-process writer (audit.trail.record_soon); beyond it the
# caller writes its record itself.
AUDIT_QUEUE_SIZE = env_int("AUDIT_QUEUE_SIZE", 10000, minimum=1)
# The whole hash chain is verified this often (audit.verify); the audit page shows the last result.
AUDIT_VERIFY_SECONDS = env_float("AUDIT_VERIFY_SECONDS", 3600.0, minimum=60.0)
CELERY_BEAT_SCHEDULE.update({
    "audit.seal": {"task": "audit.seal", "schedule": AUDIT_SEAL_SECONDS},
    "audit.verify": {"task": "audit.verify", "schedule": AUDIT_VERIFY_SECONDS},
    "audit.purge": {"task": "audit.purge", "schedule": 86400.0},
    # Does nothing without AUDIT_REPOSITORY_URL.  A run not started within one interval expires
    # (the next one does its work), so that a stopped worker does not find a pile of them.
    "audit_export.export": {"task": "audit_export.export", "schedule": AUDIT_EXPORT_SECONDS,
                            "options": {"expires": AUDIT_EXPORT_SECONDS}},
})

# --- Auth, i18n, static --------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Sign-in (accounts.signin, accounts.directory): django-axes first refuses a locked user or address,
# then the directory (LDAP / Active Directory, when LDAP_SERVER_URI is set), then local accounts.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "accounts.directory.DirectoryBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Lockout: LOGIN_FAILURE_LIMIT failed sign-ins in a row for one user name, or from one client
# address, lock it for LOGIN_LOCKOUT_MINUTES (0: until an administrator unlocks it).
LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
LOGIN_LOCKOUT_MINUTES = env_int("LOGIN_LOCKOUT_MINUTES", 15, minimum=0)
AXES_FAILURE_LIMIT = "accounts.signin.failure_limit"
# None: no cool-off (axes tests for None itself, so this cannot be a callable returning None).
AXES_COOLOFF_TIME = datetime.timedelta(minutes=LOGIN_LOCKOUT_MINUTES) if LOGIN_LOCKOUT_MINUTES else None
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked.html"
AXES_HTTP_RESPONSE_CODE = 429
# The client's address as project.https sees it: X-Forwarded-For counts from WEB_TRUSTED_PROXIES only.
AXES_CLIENT_IP_CALLABLE = "project.https.client_address"
# Axes logs user names and addresses of every attempt itself; accounts.signin logs the lockouts.
AXES_VERBOSE = False
# Sessions: end after SESSION_IDLE_MINUTES without activity and SESSION_MAX_HOURS after sign-in
# (accounts.sessions); a password change ends every other session of the user (Django's session hash).
SESSION_IDLE_MINUTES = env_int("SESSION_IDLE_MINUTES", 30, minimum=1)
SESSION_MAX_HOURS = env_int("SESSION_MAX_HOURS", 12, minimum=1)
SESSION_COOKIE_AGE = SESSION_MAX_HOURS * 3600
# Directory sign-in (accounts.directory, django-auth-ldap).  LDAP_SERVER_URI empty: off.
LDAP_SERVER_URI = env_str("LDAP_SERVER_URI", "")
LDAP_BIND_DN = env_str("LDAP_BIND_DN", "")
# May be sealed (fernet:..., project.encryption), like the other stored credentials.
LDAP_BIND_PASSWORD = env_str("LDAP_BIND_PASSWORD", "")
LDAP_USER_SEARCH_BASE = env_str("LDAP_USER_SEARCH_BASE", "")
LDAP_USER_SEARCH_FILTER = env_str("LDAP_USER_SEARCH_FILTER", "(sAMAccountName=%(user)s)")
LDAP_GROUP_SEARCH_BASE = env_str("LDAP_GROUP_SEARCH_BASE", "")
LDAP_GROUP_TYPE = env_choice("LDAP_GROUP_TYPE", "activedirectory",
                             {"activedirectory", "groupofnames", "groupofuniquenames", "posixgroup"})
# role=group DN;role=group DN ... (roles of project.access); a user in none of them has no role.
LDAP_ROLE_GROUPS = env_str("LDAP_ROLE_GROUPS", "")
LDAP_START_TLS = env_bool("LDAP_START_TLS", False)
LDAP_CA_CERTIFICATES = env_str("LDAP_CA_CERTIFICATES", "")
LDAP_TIMEOUT_SECONDS = env_float("LDAP_TIMEOUT_SECONDS", 5.0, minimum=0.1)
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LANGUAGE_CODE = "en-us"
# Local time of the department: DICOM dates and times (MWL, images) and HL7 timestamps
# without an offset are read in this zone.
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
# Collected static files: outside VAR_DIR in the image (built into it, not kept on the data volume,
# where an older image's files would shadow a newer one's).
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static"))).resolve()
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
SESSION_COOKIE_HTTPONLY = True
# --- The web over HTTPS (project.https; gunicorn.conf.py) -------------------------------------------
# WEB_TLS=true: gunicorn serves HTTPS itself with TLS_CERTIFICATE / TLS_PRIVATE_KEY (TLS 1.2+).
# Behind a reverse proxy that terminates TLS instead, list its addresses in WEB_TRUSTED_PROXIES:
# X-Forwarded-Proto is believed from them only.  On an HTTPS request the session and CSRF cookies
# are Secure and HSTS is sent; on plain HTTP neither (SESSION_COOKIE_SECURE / CSRF_COOKIE_SECURE
# force Secure cookies on every request, which plain HTTP then cannot log in with).
WEB_TLS = env_bool("WEB_TLS", False)
WEB_TRUSTED_PROXIES = env_list("WEB_TRUSTED_PROXIES", [])
for _entry in WEB_TRUSTED_PROXIES:
    if network(_entry) is None:  # left in the list, where it matches no address
        record("WEB_TRUSTED_PROXIES", _entry, "is neither an IP address nor a CIDR network")
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# Probes that speak plain HTTP on the host itself keep working with the redirect on.
SECURE_REDIRECT_EXEMPT = [r"^health/$"]
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
# Django's deploy warnings for the two settings above assume a site that is HTTPS only; here the
# cookies are Secure on every HTTPS request (project.https), and pacs.W007 warns when the web has no HTTPS.
SILENCED_SYSTEM_CHECKS = ["security.W012", "security.W016"]
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# --- Logging: one JSON object a line, no patient names (see project.logs) ----------------------
LOG_LEVEL = env_choice("LOG_LEVEL", "INFO", {"DEBUG", "INFO", "WARNING", "ERROR"})
# Accession numbers in log lines (the extra "accession_number"): masked unless true (project.logs).
LOG_ACCESSION_NUMBERS = env_bool("LOG_ACCESSION_NUMBERS", False)
# Django's error reports (DEBUG page, mails to ADMINS) show no request value or local variable.
DEFAULT_EXCEPTION_REPORTER_FILTER = "project.logs.NoPatientDataExceptionReporterFilter"
DEFAULT_EXCEPTION_REPORTER = "project.logs.NoPatientDataExceptionReporter"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "project.logs.JsonFormatter"}},
    "filters": {"patient_data": {"()": "project.logs.PatientDataFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["patient_data"]}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's own defaults would log these through handlers of theirs, without the filter
        # (django.server: runserver's request lines, query string included): no handlers of
        # their own, so that they reach the root's filtered one.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.server": {"handlers": [], "level": "INFO", "propagate": True},
        "pynetdicom": {"level": "WARNING"},
        "celery": {"level": "INFO"},
    },
}

# --- Operator's console and journey --------------------------------------------------------
# A study whose last image arrived longer ago than this and is not committed by the VNA is overdue.
JOURNEY_VNA_OVERDUE_MINUTES = env_int("JOURNEY_VNA_OVERDUE_MINUTES", 60, minimum=1)
# An ORU^R01 queued longer ago than this and not acknowledged (AA) is overdue.
JOURNEY_ORU_ACK_OVERDUE_MINUTES = env_int("JOURNEY_ORU_ACK_OVERDUE_MINUTES", 30, minimum=1)

VAR_DIR.mkdir(parents=True, exist_ok=True)
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("TCP_NODELAY", "1")
