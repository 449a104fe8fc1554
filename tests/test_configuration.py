"""Configuration from the environment: system checks name what is wrong (stable IDs), the
defaults work without any environment, and .env.example lists every setting."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _manage(*args: str, env_extra: dict[str, str], drop=("DATABASE_URL", "CELERY_BROKER_URL"), tmp_path=None):
    # DJANGO_ALLOW_ASYNC_UNSAFE: set by the browser tests' conftest for Playwright, an Error
    # (async.E001) for check --deploy; an operator's environment does not have it.
    env = {k: v for k, v in os.environ.items() if k not in drop and k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    if tmp_path is not None:
        env["VAR_DIR"] = str(tmp_path / "var")
    env.update(env_extra)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


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


def test_deploy_checks_warn_about_development_secrets_and_fail_on_dicom_open_to_everyone(tmp_path):
    result = _manage("check", "--deploy", tmp_path=tmp_path, env_extra={})
    out = result.stderr + result.stdout
    assert "pacs.W002" in out and "pacs.W003" in out
    assert "pacs.E006" not in out and "pacs.W001" not in out  # unknown AEs from the loopback only
    closed = _manage("check", "--deploy", tmp_path=tmp_path, env_extra={
        "DICOM_UNKNOWN_AE_FROM": "none", "SECRET_KEY": "x" * 60,
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/pacs"})
    out = closed.stderr + closed.stdout
    assert "pacs.W001" not in out and "pacs.W002" not in out and "pacs.W003" not in out
    for env, named in [({"DICOM_UNKNOWN_AE_FROM": "10.0.0.0/8,0.0.0.0/0"}, "DICOM_UNKNOWN_AE_FROM=10.0.0.0/8,0.0.0.0/0"),
                       ({"DICOM_ALLOW_UNKNOWN_AE": "true"}, "DICOM_ALLOW_UNKNOWN_AE=true")]:
        open_to_all = _manage("check", "--deploy", tmp_path=tmp_path, env_extra=env)
        out = open_to_all.stderr + open_to_all.stdout
        assert open_to_all.returncode != 0 and re.search(rf"pacs\.E006\) {re.escape(named)} admits", out), out
    wider = _manage("check", "--deploy", tmp_path=tmp_path, env_extra={"DICOM_UNKNOWN_AE_FROM": "10.0.0.0/8"})
    out = wider.stderr + wider.stdout
    assert wider.returncode == 0 and "pacs.W001" in out and "pacs.E006" not in out, out


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
