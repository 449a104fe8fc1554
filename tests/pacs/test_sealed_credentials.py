"""Secrets at rest (project.encryption): VNA credentials are sealed in the database, read back in
clear, re-sealed on key rotation, never shown back in the admin, and a secret that no configured
key opens fails clearly instead of being sent empty or overwritten."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection

from pacs import stow
from pacs.models import VnaDestination
from pacs.models import transfers as tr
from pacs.services.routing import destinations
from pacs.services.routing.sending import PermanentError
from project import encryption

pytestmark = pytest.mark.django_db

PASSWORD = "vna-password-4711"


@pytest.fixture
def keys(settings):
    """Two keys; the test decides which are configured (the first seals, all open)."""
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()

    def use(*configured: str) -> None:
        settings.SECRETS_ENCRYPTION_KEYS = list(configured)
        encryption.reset()

    use(old)
    yield old, new, use
    encryption.reset()


def stored(pk: int) -> tuple[str, str]:
    """The username and password columns as the database holds them."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT username, password FROM {VnaDestination._meta.db_table} WHERE id = %s", [pk])
        return cursor.fetchone()


def destination(**kwargs) -> VnaDestination:
    return VnaDestination.objects.create(name="vna", kind=tr.KIND_STOW, url="http://vna.example/dicom-web",
                                         username="engine", password=PASSWORD, **kwargs)


def test_credentials_are_sealed_in_the_database_and_read_in_clear(keys):
    row = destination()
    username, password = stored(row.pk)
    assert username.startswith("fernet:") and password.startswith("fernet:")
    assert PASSWORD not in password and "engine" not in username
    again = VnaDestination.objects.get(pk=row.pk)
    assert (again.username, again.password) == ("engine", PASSWORD)
    assert stored(row.pk)[1] == password, "reading does not rewrite"


def test_environment_destination_credentials_are_sealed(keys, settings):
    settings.VNA_DESTINATIONS = f"stow+https://engine:{PASSWORD}@vna.example:8443/dicom-web"
    (row,) = destinations.sync_environment_destinations()
    assert row.url == "https://vna.example:8443/dicom-web"
    assert PASSWORD not in "".join(stored(row.pk))
    assert VnaDestination.objects.get(pk=row.pk).password == PASSWORD


def test_key_rotation_reseals_with_the_new_key(keys, capsys):
    old, new, use = keys
    row = destination()
    sealed_with_old = stored(row.pk)[1]
    use(new, old)
    assert VnaDestination.objects.get(pk=row.pk).password == PASSWORD, "old key still opens"
    call_command("reencrypt_secrets")
    assert "re-sealed 2 stored secrets; 0 could not be opened" in capsys.readouterr().out
    assert stored(row.pk)[1] != sealed_with_old
    use(new)
    assert VnaDestination.objects.get(pk=row.pk).password == PASSWORD, "the new key alone opens it"
    use(old)
    assert isinstance(VnaDestination.objects.get(pk=row.pk).password, encryption.Unreadable)


def test_a_secret_no_key_opens_is_unreadable_kept_and_refused(keys, capsys):
    old, new, use = keys
    row = destination()
    sealed = stored(row.pk)
    use(new)
    again = VnaDestination.objects.get(pk=row.pk)
    assert again.password == "" and isinstance(again.password, encryption.Unreadable)
    again.enabled = False
    again.save()
    assert stored(row.pk) == sealed, "saving the row keeps the sealed value it could not open"
    with pytest.raises(SystemExit) as exit_info:
        call_command("reencrypt_secrets")
    assert exit_info.value.code == 1
    assert "could not be opened" in capsys.readouterr().out
    assert stored(row.pk) == sealed
    with pytest.raises(PermanentError, match="SECRETS_ENCRYPTION_KEYS"):
        stow._post(again, [b""])


def test_bad_key_setting_is_reported_without_its_value(tmp_path):
    result = subprocess.run([sys.executable, "manage.py", "check"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "VAR_DIR": str(tmp_path), "SECRETS_ENCRYPTION_KEYS": "not-a-key-x9"})
    assert result.returncode != 0
    assert "SECRETS_ENCRYPTION_KEYS" in result.stderr and "not-a-key-x9" not in result.stderr + result.stdout


def test_admin_never_shows_the_password_and_blank_keeps_it(keys, client):
    admin = User.objects.create_superuser("admin", password="pw-admin-1")
    client.force_login(admin)
    row = destination()
    url = f"/admin/pacs/vnadestination/{row.pk}/change/"
    page = client.get(url).content.decode()
    assert PASSWORD not in page and stored(row.pk)[1] not in page
    assert "a password is stored" in page
    form = {"name": "vna", "kind": tr.KIND_STOW, "ae_title": "", "host": "", "port": "",
            "url": "http://vna.example/dicom-web", "username": "engine", "password": "", "storage_commitment": "on",
            "enabled": "on"}
    assert client.post(url, form).status_code == 302
    assert VnaDestination.objects.get(pk=row.pk).password == PASSWORD, "left blank: kept"
    assert client.post(url, {**form, "password": "changed-pw-2"}).status_code == 302
    assert VnaDestination.objects.get(pk=row.pk).password == "changed-pw-2"
    assert client.post(url, {**form, "clear_password": "on"}).status_code == 302
    assert VnaDestination.objects.get(pk=row.pk).password == ""


def test_generated_key_is_kept_in_var_dir_with_owner_only_access(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    settings.SECRETS_ENCRYPTION_KEYS = []
    encryption.reset()
    try:
        sealed = encryption.seal("x")
        key_file = tmp_path / "secrets.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        encryption.reset()
        assert encryption.unseal(sealed) == "x", "the same key is read back after a restart"
    finally:
        encryption.reset()
