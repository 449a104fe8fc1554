"""Test configuration: real PostgreSQL and Redis (see the Makefile's `test` target), the tiers,
and the fixtures the test directories share.

The test database is PostgreSQL (DATABASE_URL, default postgres://postgres@127.0.0.1:5432/pacs);
pytest-django creates test_pacs.  Socket tests start the real listeners on ephemeral ports.

Tiers (markers registered in pyproject.toml, given to every test by ``pytest_collection_modifyitems``):

- ``unit``: no database, no broker, no sockets (``make test-quick``: ``pytest -m unit``); a unit
  test that opens a connection fails (``_unit_tests_open_no_connection``);
- ``integration``: PostgreSQL and/or Redis (a ``django_db`` marker, a ``db`` fixture);
- ``socket``: real sockets with peers: dcmtk, Orthanc, MLLP peers, slapd, rsyslog, Celery worker
  processes, the engine's own listeners and processes (a fixture below that starts one, or a
  ``socket`` marker on the test or its module);
- ``browser``: headless Chromium (tests/e2e).

Each test gets the one tier of the most it needs (browser > socket > integration > unit).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess

import pytest
import redis

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/pacs")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
os.environ.setdefault("TCP_NODELAY", "1")
# A test run is no embedded default (PostgreSQL): without a SECRET_KEY the engine refuses to start
# (project.secret_key).  One key for the run, inherited by every process a test starts.
os.environ.setdefault("SECRET_KEY", f"test-run-only-{secrets.token_urlsafe(32)}")


def pytest_configure(config):
    """Settings were loaded by pytest-django before this file: give them the run's key too."""
    from django.conf import settings

    if getattr(settings, "SECRET_KEY_MISSING", False):
        settings.SECRET_KEY, settings.SECRET_KEY_MISSING = os.environ["SECRET_KEY"], False


# ------------------------------------------------------------------------------------------ tiers
TIERS = ("browser", "socket", "integration", "unit")
#: Fixtures that start a peer or one of the engine's listeners: a test using one is a socket test.
SOCKET_FIXTURES = frozenset({
    "engine", "dicom_server", "listen", "tls_listen", "listener", "orthanc", "worker", "webhook", "slapd_directory",
    "directory_settings", "live_server", "rsyslog", "sink",
})
#: Fixtures that reach PostgreSQL or Redis.
SERVICE_FIXTURES = frozenset({
    "db", "transactional_db", "django_db_reset_sequences", "django_db_serialized_rollback", "admin_client",
    "admin_user", "django_user_model", "broker",
})


def tier(item) -> str:
    path = str(item.path).replace("\\", "/")
    if "/tests/e2e/" in path:
        return "browser"
    explicit = [name for name in TIERS if item.get_closest_marker(name)]
    if explicit:
        return explicit[0]
    fixtures = set(getattr(item, "fixturenames", ()))
    if fixtures & SOCKET_FIXTURES:
        return "socket"
    if item.get_closest_marker("django_db") or fixtures & SERVICE_FIXTURES:
        return "integration"
    return "unit"


def pytest_collection_modifyitems(config, items):
    """One tier marker on every test (the test's own or its module's ``socket``/``browser``/
    ``integration`` marker wins; else by the fixtures it uses)."""
    for item in items:
        name = tier(item)
        if not item.get_closest_marker(name):
            item.add_marker(getattr(pytest.mark, name))


@pytest.fixture(autouse=True)
def _unit_tests_open_no_connection(request, monkeypatch):
    """A test of the unit tier that connects, listens or starts a process fails at once: it
    belongs to another tier (mark it, or give it the fixture it needs)."""
    if not request.node.get_closest_marker("unit"):
        return

    def no_process(*args, **kwargs):
        raise AssertionError(f"a unit test started a process ({args[1] if len(args) > 1 else kwargs}): "
                             "mark it socket")

    monkeypatch.setattr(subprocess.Popen, "__init__", no_process)

    def refused(sock, address, *args):
        if sock.family == socket.AF_UNIX:
            return real_connect(sock, address, *args)
        raise AssertionError(f"a unit test opened a connection ({address!r}): mark it integration or socket")

    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refused)
    monkeypatch.setattr(socket.socket, "connect_ex", refused)
    monkeypatch.setattr(socket.socket, "bind", lambda sock, address: refused(sock, address))


@pytest.fixture(autouse=True)
def _fresh_declared_senders():
    """Each test reads the declared HL7 senders afresh (its own database rows and settings)."""
    from hl7gateway import senders

    senders.reset()
    yield
    senders.reset()


@pytest.fixture(autouse=True)
def _audit_writer_stopped():
    """Whatever a test handed to audit.trail.record_soon (a refusal, a query) is written before
    its database is flushed, and the writer's connection closed: none is left open when the test
    database is dropped."""
    yield
    from audit import trail

    trail.stop(timeout=60)


@pytest.fixture(autouse=True)
def _audit_reads_in_the_callers_transaction(request, settings):
    """Outside the audit trail's own tests, record_soon writes in the caller's transaction (its
    path when the writer's queue is full): the writer thread's own connection would commit a
    read's record past the test's rolled-back transaction, into the next test."""
    if "tests/audit/" not in str(request.node.path).replace("\\", "/"):
        settings.AUDIT_QUEUE_SIZE = 0


@pytest.fixture
def tmp_var(tmp_path, settings):
    """A private var/ (storage) directory for one test."""
    settings.STORAGE_DIR = tmp_path / "storage"
    settings.STORAGE_DIR.mkdir()
    return tmp_path


@pytest.fixture(scope="session")
def orthanc_binary():
    path = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if not os.path.exists(path):
        pytest.fail("Orthanc is not installed (apt-get install orthanc; make test does it)")
    return path


@pytest.fixture(scope="session")
def slapd_directory(tmp_path_factory):
    """A real OpenLDAP slapd with a small directory (tests/support/ldap_server.py), for the session."""
    from tests.support.ldap_server import start_slapd, stop_slapd

    directory = start_slapd(tmp_path_factory.mktemp("slapd"))
    yield directory
    stop_slapd(directory)


@pytest.fixture
def directory_settings(slapd_directory, settings):
    """Directory sign-in on, against the test slapd."""
    for name, value in slapd_directory.settings().items():
        setattr(settings, name, value)
    return slapd_directory


# ------------------------------------------------------------------------------ the DICOM listener
@pytest.fixture
def store_dir(tmp_path, settings):
    """A private image store (STORAGE_DIR) for one test."""
    settings.STORAGE_DIR = tmp_path / "storage"
    settings.STORAGE_DIR.mkdir()
    return settings.STORAGE_DIR


@pytest.fixture
def engine(transactional_db, store_dir, settings):
    """The engine's AE (``run_dicom``: Echo, MWL C-FIND, MPPS, C-STORE) on 127.0.0.1, ephemeral
    port, with a private store; stopped after the test."""
    from pacs.dimse.server import start_server

    settings.DICOM_AE_TITLE = "PACS"
    server = start_server("127.0.0.1", 0)
    try:
        yield server
    finally:
        server.shutdown()


@pytest.fixture
def dicom_server(engine):
    """The engine's AE, under the name the MWL and protocol tests use."""
    return engine


@pytest.fixture
def listen(transactional_db, settings):
    """``listen()`` starts the AE (as run_dicom does, after the test set its settings) on
    127.0.0.1, port 0; all stop at the end."""
    from pacs.dimse.server import start_server

    servers = []
    settings.DICOM_AE_TITLE = "PACS"

    def start():
        servers.append(start_server("127.0.0.1", 0))
        return servers[-1]

    yield start
    for server in servers:
        server.shutdown()


@pytest.fixture
def pki(tmp_path):
    """A test CA and the certificates of the DICOM TLS tests: the engine's, CT1's and CT2's, an
    expired one and one from another CA."""
    from tests.support.tls_certs import TestPKI

    pki = TestPKI(tmp_path / "pki")
    pki.engine = pki.issue("pacs.hospital.test", dns=["localhost"], ips=["127.0.0.1"])
    pki.ct1 = pki.issue("CT1", dns=["ct1.hospital.test"])
    pki.ct2 = pki.issue("CT2", dns=["ct2.hospital.test"])
    pki.expired = pki.issue("CT1-expired", dns=["ct1.hospital.test"], expired=True)
    pki.stranger = TestPKI(tmp_path / "other", name="Nobody's CA").issue("CT1", dns=["ct1.hospital.test"])
    return pki


@pytest.fixture
def tls_listen(transactional_db, settings, pki):
    """Start the AE (clear port and TLS port) after the test set its settings."""
    from pacs.dimse.server import start_server
    from tests.support.net import free_port

    servers = []
    settings.DICOM_AE_TITLE = "PACS"
    settings.TLS_CERTIFICATE = str(pki.engine.chain)
    settings.TLS_PRIVATE_KEY = str(pki.engine.key)
    settings.TLS_CA_CERTIFICATES = str(pki.ca_file)
    settings.DICOM_TLS_CLIENT_CERTIFICATES = "required"

    def start():
        servers.append(start_server("127.0.0.1", 0, tls_port=free_port()))
        return servers[-1]

    yield start
    for server in servers:
        server.shutdown()


# ------------------------------------------------------------------------------- the MLLP listener
@pytest.fixture
def listener():
    """``listener(**options)`` starts an ``MLLPServer`` on 127.0.0.1, port 0; all stop at the end."""
    from hl7gateway.server import MLLPServer

    servers = []

    def start(**kwargs) -> MLLPServer:
        server = MLLPServer("127.0.0.1", 0, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# ------------------------------------------------------------------------ Celery workers, the VNA
@pytest.fixture
def broker():
    """The Redis database of this test run, emptied before and after: no task of an earlier test
    is picked up."""
    from django.conf import settings

    r = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    r.flushdb()
    yield r
    r.flushdb()


@pytest.fixture
def routing_settings(settings):
    """Short routing timings (quiet period, retries, lease), no VNA from the environment."""
    settings.DICOM_AE_TITLE = "PACS"
    settings.VNA_DESTINATIONS = ""
    settings.STUDY_QUIET_PERIOD_SECONDS = 1
    settings.TRANSFER_RETRY_BASE_SECONDS = 1.0
    settings.TRANSFER_RETRY_MAX_SECONDS = 2.0
    settings.TRANSFER_LEASE_SECONDS = 4
    settings.TRANSFER_MAX_ATTEMPTS = 10
    settings.VNA_DICOM_SENDER = "engine"
    return settings


@pytest.fixture(params=["engine", "dcmtk"])
def sender(request, routing_settings):
    """Run the test with each C-STORE sender (VNA_DICOM_SENDER); request it before ``worker``."""
    routing_settings.VNA_DICOM_SENDER = request.param
    return request.param


@pytest.fixture
def worker(transactional_db, store_dir, routing_settings, tmp_path):
    """A routing Celery worker process on the test database (DATABASE_URL names test_<db>)."""
    from tests.support.celery_worker import BROKER, routing_worker
    from tests.support.postgres import database_url

    redis.Redis.from_url(BROKER).flushdb()
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "CELERY_BROKER_URL": BROKER,
        "STORAGE_DIR": str(store_dir),
        "DICOM_AE_TITLE": "PACS",
        "VNA_DESTINATIONS": "",
        "TRANSFER_RETRY_BASE_SECONDS": "1",
        "TRANSFER_RETRY_MAX_SECONDS": "2",
        "TRANSFER_LEASE_SECONDS": "4",
        "TRANSFER_MAX_ATTEMPTS": "10",
        "VNA_DICOM_SENDER": routing_settings.VNA_DICOM_SENDER,
        "TCP_NODELAY": "1",
    }
    w = routing_worker(tmp_path, env).start()
    try:
        yield w
    finally:
        w.stop()
        redis.Redis.from_url(BROKER).flushdb()


@pytest.fixture
def orthanc(engine, tmp_path):
    """Orthanc as the VNA; it knows the engine's AE (for the N-EVENT-REPORT, PS3.4 J.3.3)."""
    from tests.support.orthanc import OrthancProcess

    vna = OrthancProcess(tmp_path / "orthanc", engine_aet="PACS", engine_port=engine.server_address[1])
    vna.start()
    try:
        yield vna
    finally:
        vna.stop()


# ------------------------------------------------------------------------------------ users, roles
@pytest.fixture
def people(db):
    """A user of each role (project.access.ROLES), each with a dictation API token: {role: (user, key)}."""
    import secrets

    from django.contrib.auth.models import Group, User

    from project.access import ROLES
    from worklist.models import ApiToken

    users = {}
    for role in ROLES:
        u = User.objects.create_user(f"rbac_{role}", password="x-Rbac-Pass-1")
        u.groups.add(Group.objects.get(name=role))
        key = secrets.token_urlsafe(16)
        ApiToken.objects.create(user=u, name="rbac", key_sha256=ApiToken.digest(key))
        users[role] = (u, key)
    return users


# ------------------------------------------------------------------------------------- monitoring
@pytest.fixture
def webhook():
    """A real HTTP listener receiving alarm webhooks."""
    from tests.support.webhook import WebhookSink

    with WebhookSink() as sink:
        yield sink


@pytest.fixture
def mail_settings(settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.ALARM_EMAIL_FROM = "alarms@pacs.test"
    return settings


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After each test and all its fixtures: the audit records its pages handed to record_soon are
    written and the writer's connection closed (else the test database cannot be dropped); and
    the records that the writer committed beside a rolled-back test (``db``, not
    ``transactional_db``) are removed, so that no later test counts them.  TRUNCATE (not DELETE,
    which the append-only triggers refuse), and only on a test database."""
    result = yield
    from django.db import connection
    from pytest_django.plugin import blocking_manager_key

    from audit import trail

    if not connection.settings_dict["NAME"].startswith("test_"):
        assert trail.stop(timeout=60), "the audit writer did not drain"
        return result
    # The writer thread needs the database too: pytest-django blocks it outside a test.
    with item.config.stash[blocking_manager_key].unblock():
        assert trail.stop(timeout=60), "the audit writer did not drain"
        from audit.models import AuditRecord

        if not connection.in_atomic_block and AuditRecord.records.exists():
            with connection.cursor() as cursor:
                cursor.execute("TRUNCATE audit_auditpatient, audit_auditrecord")
    return result
