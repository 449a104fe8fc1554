"""``manage.py reencrypt_secrets``: seal every stored credential again with the first key of
SECRETS_ENCRYPTION_KEYS (the step of a key rotation between adding the new key and removing the
old one); ``--new-key`` prints a fresh key and changes nothing.  Exits 1 when a stored secret
cannot be opened with any configured key (it is left as it is)."""

from __future__ import annotations

import sys

from cryptography.fernet import Fernet, InvalidToken
from django.core.management.base import BaseCommand
from django.db import connection, transaction

from project import encryption


class Command(BaseCommand):
    help = "Re-seal stored credentials with the first key of SECRETS_ENCRYPTION_KEYS (key rotation)."

    def add_arguments(self, parser):
        parser.add_argument("--new-key", action="store_true", help="print a new key and exit")

    def handle(self, *args, new_key: bool, **options):
        if new_key:
            self.stdout.write(Fernet.generate_key().decode())
            return
        resealed = unreadable = 0
        quote = connection.ops.quote_name
        for model, names in encryption.sealed_fields():
            # The stored (sealed) column values, read and written as they are in the table: the
            # model's fields would open them on the way in.
            table = quote(model._meta.db_table)
            columns = [quote(model._meta.get_field(n).column) for n in names]
            pk = quote(model._meta.pk.column)
            with transaction.atomic(), connection.cursor() as cursor:
                lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
                cursor.execute(f"SELECT {pk}, {', '.join(columns)} FROM {table}{lock}")
                for row_id, *stored in cursor.fetchall():
                    changes = {}
                    for name, column, value in zip(names, columns, stored, strict=True):
                        try:
                            new = encryption.reseal(value or "")
                        except InvalidToken:
                            unreadable += 1
                            self.stderr.write(f"{model._meta.label} {row_id} {name}: no configured key opens it")
                            continue
                        if new != (value or ""):
                            changes[column] = new
                    if changes:
                        sets = ", ".join(f"{c} = %s" for c in changes)
                        cursor.execute(f"UPDATE {table} SET {sets} WHERE {pk} = %s", [*changes.values(), row_id])
                        resealed += len(changes)
        self.stdout.write(f"re-sealed {resealed} stored secrets; {unreadable} could not be opened")
        if unreadable:
            sys.exit(1)
