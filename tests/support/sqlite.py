"""The engine on SQLite (the embedded default): its own ``manage.py`` processes against a fresh
SQLite database made by ``migrate``, for what must hold on SQLite as on PostgreSQL.  The test
process's PostgreSQL database and Celery broker are left out of their environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class SqliteEngine:
    """A SQLite database in ``directory`` (``VAR_DIR`` too), migrated when made."""

    def __init__(self, directory: Path, name: str):
        self.env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
        self.env.update(VAR_DIR=str(directory), DATABASE_URL=f"sqlite:///{directory / name}")
        migrate = self.manage("migrate", "--noinput", "-v", "0")
        assert migrate.returncode == 0, migrate.stderr

    def manage(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=300)

    def run_script(self, script: str, done: str) -> None:
        """Run ``script`` in ``manage.py shell``; it must exit 0 and print ``done`` (its last line),
        so that a script stopped early without an error does not pass."""
        result = self.manage("shell", "-c", script)
        assert result.returncode == 0, result.stderr + result.stdout
        assert done in result.stdout, result.stdout
