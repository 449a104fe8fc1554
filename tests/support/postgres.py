"""A PostgreSQL client of its own (psycopg, outside Django), for the parts a second client must
play: holding a lock, breaking the database, reading what another process committed."""

from __future__ import annotations

from urllib.parse import quote

import psycopg
from django.db import connection


def conninfo(dbname: str | None = None) -> str:
    s = connection.settings_dict
    return psycopg.conninfo.make_conninfo(
        host=s["HOST"] or "127.0.0.1", port=s["PORT"] or 5432, user=s["USER"], password=s["PASSWORD"] or None,
        dbname=dbname or s["NAME"],
    )


def database_url() -> str:
    """The test database (pytest-django's test_<name>) as DATABASE_URL, for the engine's
    processes a test starts (listeners, workers)."""
    db = connection.settings_dict
    cred = db["USER"] + (f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else "")
    return f"postgres://{cred}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
