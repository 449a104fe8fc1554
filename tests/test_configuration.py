"""Configuration from the environment: system checks name what is wrong (stable IDs), the
defaults work without any environment, and .env.example lists every setting."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


# The engine's own processes (manage.py), each on a database of its own: the socket tier.
ENGINE_PROCESS = pytest.mark.socket


def _manage(*args: str, env_extra: dict[str, str], drop=("DATABASE_URL", "CELERY_BROKER_URL"), tmp_path=None):
    # DJANGO_ALLOW_ASYNC_UNSAFE: set by the browser tests' conftest for Playwright, an Error
    # (async.E001) for check --deploy; an operator's environment does not have it.
    env = {k: v for k, v in os.environ.items() if k not in drop and k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    if tmp_path is not None:
        env["VAR_DIR"] = str(tmp_path / "var")
    env.update(env_extra)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


@ENGINE_PROCESS
def test_bad_values_are_named_by_system_checks(tmp_path):
    result = _manage("check", tmp_path=tmp_path, env_extra={
        "HL7_MLLP_PORT": "twenty-five-seventy-five",
        "DICOM_PORT": "70000",
        "DICOM_ALLOW_UNKNOWN_AE": "perhaps",
        "DICOM_AE_TITLE": "AN_AE_TITLE_FAR_TOO_LONG",
        "ACCESSION_NUMBER_FORMAT": "ACCESSION{n:020d}",
        "CELERY_BROKER_URL": "amqp://guest@localhost//",
        "DATABASE_URL": "mysql://root@localhost/pacs",
    })
    assert result.returncode != 0
    out = result.stderr + result.stdout
    assert re.search(r"pacs\.E001.*HL7_MLLP_PORT='twenty-five-seventy-five' must be a whole number", out)
    assert re.search(r"pacs\.E001.*DICOM_PORT='70000' must be between", out)
    assert re.search(r"pacs\.E001.*DICOM_ALLOW_UNKNOWN_AE='perhaps'", out)
    assert "pacs.E002" in out and "AN_AE_TITLE_FAR_TOO_LONG" in out
    assert "pacs.E003" in out
    assert "pacs.E004" in out
    assert "pacs.E005" in out


@ENGINE_PROCESS
def test_no_environment_means_sqlite_and_a_filesystem_broker(tmp_path):
    result = _manage("check", tmp_path=tmp_path, env_extra={})
    assert result.returncode == 0, result.stderr
    shown = _manage("shell", "-c", "from django.conf import settings as s; print(s.DATABASES['default']['ENGINE'], "
                    "s.DATABASES['default']['NAME'], s.CELERY_BROKER_URL, s.HL7_MLLP_PORT, s.DICOM_PORT, "
                    "s.DICOM_AE_TITLE, s.WEB_PORT)", tmp_path=tmp_path, env_extra={})
    assert shown.returncode == 0, shown.stderr
    engine, name, broker, mllp, dicom, aet, web = shown.stdout.strip().splitlines()[-1].split()
    assert engine == "django.db.backends.sqlite3" and name == str(tmp_path / "var" / "pacs.sqlite3")
    assert broker == "filesystem://"
    assert (mllp, dicom, aet, web) == ("2575", "11112", "PACS", "8000")


@ENGINE_PROCESS
def test_deploy_checks_warn_about_sqlite_and_fail_on_dicom_open_to_everyone(tmp_path):
    result = _manage("check", "--deploy", tmp_path=tmp_path, env_extra={})
    out = result.stderr + result.stdout
    assert "pacs.W003" in out and "pacs.E008" not in out
    assert "pacs.E006" not in out and "pacs.W001" not in out  # unknown AEs from the loopback only
    closed = _manage("check", "--deploy", tmp_path=tmp_path, env_extra={
        "DICOM_UNKNOWN_AE_FROM": "none", "SECRET_KEY": "x" * 60,
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/pacs"})
    out = closed.stderr + closed.stdout
    assert "pacs.W001" not in out and "pacs.E008" not in out and "pacs.W003" not in out
    for env, named in [({"DICOM_UNKNOWN_AE_FROM": "10.0.0.0/8,0.0.0.0/0"}, "DICOM_UNKNOWN_AE_FROM=10.0.0.0/8,0.0.0.0/0"),
                       ({"DICOM_ALLOW_UNKNOWN_AE": "true"}, "DICOM_ALLOW_UNKNOWN_AE=true")]:
        open_to_all = _manage("check", "--deploy", tmp_path=tmp_path, env_extra=env)
        out = open_to_all.stderr + open_to_all.stdout
        assert open_to_all.returncode != 0 and re.search(rf"pacs\.E006\) {re.escape(named)} admits", out), out
    wider = _manage("check", "--deploy", tmp_path=tmp_path, env_extra={"DICOM_UNKNOWN_AE_FROM": "10.0.0.0/8"})
    out = wider.stderr + wider.stdout
    assert wider.returncode == 0 and "pacs.W001" in out and "pacs.E006" not in out, out


@ENGINE_PROCESS
def test_former_dicom_allow_unknown_ae_still_works_and_is_named(tmp_path):
    show = "from django.conf import settings as s; print(s.DICOM_UNKNOWN_AE_FROM)"
    for value, expected in [("false", "[]"), ("true", "['0.0.0.0/0', '::/0']")]:
        shown = _manage("shell", "-c", show, tmp_path=tmp_path, env_extra={"DICOM_ALLOW_UNKNOWN_AE": value})
        assert shown.stdout.strip().splitlines()[-1] == expected, shown.stderr
    checked = _manage("check", tmp_path=tmp_path, env_extra={"DICOM_ALLOW_UNKNOWN_AE": "false"})
    assert checked.returncode == 0 and "pacs.W004" in checked.stderr + checked.stdout
    both = _manage("check", tmp_path=tmp_path, env_extra={"DICOM_ALLOW_UNKNOWN_AE": "false",
                                                            "DICOM_UNKNOWN_AE_FROM": "10.0.0.0/8"})
    assert both.returncode != 0 and re.search(r"pacs\.E001.*DICOM_ALLOW_UNKNOWN_AE.*replaced", both.stderr + both.stdout)


@ENGINE_PROCESS
def test_bad_dicom_nodes_and_unknown_ae_networks_are_named(tmp_path):
    result = _manage("check", tmp_path=tmp_path, env_extra={
        "DICOM_NODES": "CT1@10.1.2.3:mwl+mpps+store,US2@10.1.4.0/24:print", "DICOM_UNKNOWN_AE_FROM": "10.0.0.300"})
    out = result.stderr + result.stdout
    assert result.returncode != 0
    assert re.search(r"pacs\.E001.*DICOM_NODES='US2@10.1.4.0/24:print' unknown service", out)
    assert "CT1@10.1.2.3" not in out
    assert re.search(r"pacs\.E001.*DICOM_UNKNOWN_AE_FROM='10.0.0.300'", out)


def test_env_example_lists_every_setting_read_from_the_environment():
    names = set()
    for path in ROOT.glob("*/**/*.py"):
        if ".venv" in path.parts or "tests" in path.parts:
            continue
        names |= set(re.findall(r"env_(?:str|int|float|bool|list|choice)\(\s*\"([A-Z0-9_]+)\"", path.read_text()))
    assert len(names) > 30
    example = (ROOT / ".env.example").read_text()
    missing = sorted(n for n in names if not re.search(rf"^# {n}=", example, re.M))
    assert missing == []


# --- SECRET_KEY (project.secret_key) -------------------------------------------------------------

POSTGRES = "postgres://postgres@127.0.0.1:5432/pacs"
SHOW_KEY = "from django.conf import settings as s; print(s.SECRET_KEY)"


def _without_secret(*args: str, tmp_path, env_extra: dict[str, str]):
    return _manage(*args, tmp_path=tmp_path, env_extra=env_extra,
                   drop=("DATABASE_URL", "CELERY_BROKER_URL", "SECRET_KEY"))


@ENGINE_PROCESS
def test_no_secret_key_outside_the_embedded_default_refuses_to_start(tmp_path):
    for extra in ({"DATABASE_URL": POSTGRES}, {"CELERY_BROKER_URL": "redis://127.0.0.1:6379/7"},
                  {"DATABASE_URL": POSTGRES, "CELERY_BROKER_URL": "redis://127.0.0.1:6379/7"}):
        result = _without_secret("check", tmp_path=tmp_path, env_extra=extra)
        out = result.stderr + result.stdout
        assert result.returncode != 0 and re.search(r"pacs\.E008\) SECRET_KEY is not set", out), (extra, out)
        assert not (tmp_path / "var" / "secret.key").exists(), "no key is generated outside the embedded default"
    # gunicorn runs no checks: the WSGI application itself refuses to load.
    wsgi = subprocess.run([sys.executable, "-c", "import project.wsgi"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**{k: v for k, v in os.environ.items() if k != "SECRET_KEY"},
                                            "DATABASE_URL": POSTGRES, "VAR_DIR": str(tmp_path / "var")})
    assert wsgi.returncode != 0 and "ImproperlyConfigured: SECRET_KEY is not set" in wsgi.stderr
    chosen = _without_secret("check", tmp_path=tmp_path, env_extra={"DATABASE_URL": POSTGRES, "SECRET_KEY": "k" * 60})
    assert chosen.returncode == 0, chosen.stderr


@ENGINE_PROCESS
def test_embedded_default_generates_a_private_key_once_and_keeps_it(tmp_path):
    first = _without_secret("shell", "-c", SHOW_KEY, tmp_path=tmp_path, env_extra={})
    assert first.returncode == 0, first.stderr
    path = tmp_path / "var" / "secret.key"
    assert path.stat().st_mode & 0o777 == 0o600
    key = first.stdout.strip().splitlines()[-1]
    assert len(key) >= 50 and path.read_text().strip() == key
    again = _without_secret("shell", "-c", SHOW_KEY, tmp_path=tmp_path, env_extra={})
    assert again.stdout.strip().splitlines()[-1] == key
    assert _without_secret("check", tmp_path=tmp_path, env_extra={}).returncode == 0
    assert [p.name for p in path.parent.iterdir() if "secret" in p.name] == ["secret.key"], "no temporary left"


@ENGINE_PROCESS
def test_two_installations_get_two_keys(tmp_path):
    keys = []
    for name in ("one", "two"):
        shown = _without_secret("shell", "-c", SHOW_KEY, tmp_path=tmp_path / name, env_extra={})
        assert shown.returncode == 0, shown.stderr
        keys.append(shown.stdout.strip().splitlines()[-1])
    assert keys[0] != keys[1]


def test_processes_starting_together_share_one_complete_key(tmp_path):
    """Every process of ``make run`` reads settings at once on a fresh machine: one key wins."""
    from concurrent.futures import ThreadPoolExecutor

    from project import secret_key

    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: secret_key.generated(tmp_path), range(32)))
    assert len(keys) == 1 and (tmp_path / "secret.key").read_text().strip() in keys
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.key"]
