"""Test configuration: real PostgreSQL and Redis (see the Makefile's `test` target).

The test database is PostgreSQL (DATABASE_URL, default postgres://postgres@127.0.0.1:5432/pacs);
pytest-django creates test_pacs.  Socket tests start the real listeners on ephemeral ports.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket

import pytest

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dcmtk_tool(name: str) -> str:
    """dcmtk's tool by full path: pynetdicom installs scripts of the same names in the venv."""
    path = f"/usr/bin/{name}"
    if not os.path.exists(path):
        pytest.fail(f"dcmtk's {name} is not installed at {path} (apt-get install dcmtk; make test does it)")
    return path


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
    """A real OpenLDAP slapd with a small directory (tests/ldap_server.py), for the session."""
    from tests.ldap_server import start_slapd, stop_slapd

    directory = start_slapd(tmp_path_factory.mktemp("slapd"))
    yield directory
    stop_slapd(directory)


@pytest.fixture
def directory_settings(slapd_directory, settings):
    """Directory sign-in on, against the test slapd."""
    for name, value in slapd_directory.settings().items():
        setattr(settings, name, value)
    return slapd_directory

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
