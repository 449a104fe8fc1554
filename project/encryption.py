"""Secrets at rest: the credentials the engine presents to its peers (a VNA's STOW-RS user and
password) are stored sealed, never in clear, so that a copy of the database (a backup, a dump
handed to a vendor) does not carry them.

Sealing is Fernet (AES-128-CBC with an HMAC-SHA256 tag, from ``cryptography``): a stored value
reads ``fernet:<token>``.  Keys come from ``SECRETS_ENCRYPTION_KEYS`` (comma-separated Fernet
keys, ``manage.py reencrypt_secrets --new-key`` prints one): the first seals, every one of
them opens, so a key is rotated by putting a new one first, running ``manage.py
reencrypt_secrets`` and then removing the old one.  Unset, a key is generated once into
``VAR_DIR/secrets.key`` (mode 0600) and kept, so a first installation works and no two share a
key; ``check --deploy`` warns about it (pacs.W005).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models

log = logging.getLogger("project.encryption")

PREFIX = "fernet:"


class Unreadable(str):
    """A stored secret that none of the configured keys opens.  It reads as an empty string;
    whoever needs it must fail clearly rather than present nothing to the peer, and saving the
    row again writes back the sealed value it came from (``sealed``), never an empty one."""

    sealed: str

    def __new__(cls, sealed: str):
        self = super().__new__(cls, "")
        self.sealed = sealed
        return self


def key_file() -> Path:
    return Path(settings.VAR_DIR) / "secrets.key"


def _generated_key() -> bytes:
    path = key_file()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    key = Fernet.generate_key()
    with os.fdopen(fd, "wb") as out:
        out.write(key + b"\n")
        out.flush()
        os.fsync(out.fileno())
    log.warning("generated a key for secrets at rest", extra={"path": str(path)})
    return key


@functools.cache
def _keys() -> MultiFernet:
    keys = [k.encode() for k in settings.SECRETS_ENCRYPTION_KEYS] or [_generated_key()]
    return MultiFernet([Fernet(k) for k in keys])


def reset() -> None:
    """Forget the keys read (after the setting changed)."""
    _keys.cache_clear()


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)


def seal(plain: str) -> str:
    if isinstance(plain, Unreadable):
        return plain.sealed
    if not plain or is_sealed(plain):
        return plain
    return PREFIX + _keys().encrypt(plain.encode()).decode()


def unseal(stored: str) -> str:
    """The clear value; an ``Unreadable`` when no configured key opens it."""
    if not stored or not is_sealed(stored):
        return stored
    try:
        return _keys().decrypt(stored[len(PREFIX):].encode()).decode()
    except InvalidToken:
        log.error("a stored secret cannot be opened with SECRETS_ENCRYPTION_KEYS")
        return Unreadable(stored)


def reseal(stored: str) -> str:
    """The same secret sealed with the first key (raises ``InvalidToken`` when no key opens it)."""
    if not stored:
        return stored
    if not is_sealed(stored):
        return seal(stored)
    return PREFIX + _keys().rotate(stored[len(PREFIX):].encode()).decode()


class SealedField(models.TextField):
    """A text column stored sealed and read back in clear (lookups by value cannot work: every
    sealing of the same text differs)."""

    def from_db_value(self, value, expression, connection):
        return value if value is None else unseal(value)

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        return value if value is None else seal(value)


def sealed_fields() -> list[tuple[type[models.Model], list[str]]]:
    """Every model with sealed columns, and their names."""
    from django.apps import apps

    out = []
    for model in apps.get_models():
        names = [f.name for f in model._meta.get_fields() if isinstance(f, SealedField)]
        if names:
            out.append((model, names))
    return out
