"""Hot-path statements on PostgreSQL as prepared statements with server-side binding.

Django's PostgreSQL cursors bind parameters on the client and never prepare: each statement
is parsed and planned by PostgreSQL every time.  ``cursor()`` gives a cursor on Django's own
connection (same transaction, Django's error wrapping, logged in debug and seen by
``CaptureQueriesContext``) whose statements psycopg prepares on first use, so PostgreSQL
parses and plans each hot statement once per connection (bench/RESULTS.md has the numbers).

On a connection that used it (set once, outside a transaction; until then the statements run
unprepared): psycopg's ``prepare_threshold`` is set to a value never reached
(Django's own statements stay unprepared) and ``plan_cache_mode = force_generic_plan`` (only
prepared statements and PL/pgSQL plans are affected; the hot statements all find their rows
through unique indexes, so a custom plan per execution would only cost planning time).
Not for use behind a transaction-pooling proxy (pgbouncer in transaction mode), like any
prepared statement.  Other databases get Django's ordinary cursor.
"""

from __future__ import annotations

from django.db import connection
from psycopg.pq import TransactionStatus

_cursor_class = None


def _preparing_cursor_class():
    global _cursor_class
    if _cursor_class is None:
        from django.db.backends.postgresql.base import ServerBindingCursor

        class PreparingCursor(ServerBindingCursor):
            def execute(self, query, params=None, *, prepare=None, binary=None):
                return super().execute(query, params, prepare=True if prepare is None else prepare, binary=binary)

        _cursor_class = PreparingCursor
    return _cursor_class


def cursor():
    if connection.vendor != "postgresql":
        return connection.cursor()
    cls = _preparing_cursor_class()
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    conn = connection.connection
    with connection.wrap_database_errors:
        if conn.prepare_threshold is None and conn.info.transaction_status == TransactionStatus.IDLE:
            # Outside any transaction (a SET inside one would be undone by its rollback): the
            # session setting, then preparation on (Django's None also refuses prepare=True).
            autocommit = conn.autocommit
            conn.autocommit = True
            try:
                conn.execute("SET plan_cache_mode = force_generic_plan")
            finally:
                conn.autocommit = autocommit
            conn.prepare_threshold = 1 << 30
        return connection._prepare_cursor(cls(conn))
