"""Django's SECRET_KEY: signs sessions, CSRF tokens and password-reset links, so a key known to
anyone else lets them forge all three.

There is no public fallback.  Outside the embedded default (SQLite and the filesystem broker
under ``VAR_DIR``, what ``make run`` gives on a fresh machine) an unset ``SECRET_KEY`` stops every
process: ``manage.py check`` and the listeners fail on check pacs.E008, gunicorn cannot load
``project.wsgi`` and Celery's worker and beat refuse to start (``require``).  On the embedded default
a key is generated once into ``VAR_DIR/secret.key`` (mode 0600) and reused ever after, so a first
try works and no two installations share a key.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

FILE_NAME = "secret.key"
MISSING = (
    "SECRET_KEY is not set.  It signs sessions and CSRF tokens: set it to a long random value "
    "(python3 -c 'import secrets; print(secrets.token_urlsafe(50))').  Only the embedded default "
    "(no DATABASE_URL, no CELERY_BROKER_URL) generates one into VAR_DIR."
)


def generated(var_dir: Path) -> str:
    """The installation's key in ``var_dir/secret.key``, created on first use.

    Created atomically: the key is written and flushed to a private temporary file, which is
    then hard-linked to its name.  ``link`` fails if the name exists, so of two processes
    starting at once one creates the key and the other reads that complete file; nobody ever
    reads a half-written key."""
    path = var_dir / FILE_NAME
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    var_dir.mkdir(parents=True, exist_ok=True)
    temporary = var_dir / f".{FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(50) + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process was first: its key is the installation's key
    finally:
        temporary.unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> str:
    key = path.read_text().strip()
    if not key:
        raise ImproperlyConfigured(f"{path} is empty: remove it (a new key is generated) or set SECRET_KEY.")
    return key


def require() -> None:
    """Refuse to run a process without a SECRET_KEY of the operator's (see the module docstring)."""
    from django.conf import settings

    if settings.SECRET_KEY_MISSING:
        raise ImproperlyConfigured(MISSING)
