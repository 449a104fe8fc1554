"""Helpers of the audit trail's tests: a PostgreSQL connection of its own (psycopg, outside
Django) for the parts a second client must play: holding a lock, breaking the database."""

from __future__ import annotations

import psycopg
import pytest

from tests.support.postgres import conninfo


@pytest.fixture
def maintenance_client(transactional_db):
    """A client of the server's maintenance database "postgres" (autocommit): ALTER DATABASE of the
    test database cannot be run from inside it."""
    with psycopg.connect(conninfo("postgres"), autocommit=True) as client:
        yield client


@pytest.fixture
def other_client(transactional_db):
    """A second client of the test database, outside Django (autocommit off)."""
    with psycopg.connect(conninfo()) as client:
        yield client


@pytest.fixture(autouse=True)
def _drained_writer():
    """Whatever a test handed to record_soon is written before the database is flushed, and the
    writer's connection is closed (the test database is dropped at the end)."""
    from audit import trail

    yield
    assert trail.stop(timeout=60), "the audit writer did not drain"
