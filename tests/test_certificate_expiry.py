"""Certificates that do not expire unnoticed: every configured file (TLS_CERTIFICATE,
TLS_CA_CERTIFICATES) read for its certificates' expiry; within TLS_EXPIRY_WARNING_DAYS, expired or
unreadable it is an alarm on the operator's console (kind certificate_expiry, rule installed by the
migration), a /metrics gauge and a deploy warning (pacs.W006); a TLS set-up that cannot work is an
error at plain ``manage.py check`` (pacs.E007)."""

from __future__ import annotations

import datetime as dt
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.apps import apps
from django.utils import timezone

from monitoring import services
from monitoring.metrics import DatabaseCollector, render
from monitoring.models import CERTIFICATE_EXPIRY, Alarm, AlarmRule
from project.access import ADMINISTRATOR
from project.checks import check_tls_files, tls_deployment_warnings
from tests.factories import user
from tests.support.tls_certs import TestPKI

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def pki(tmp_path):
    return TestPKI(tmp_path / "pki")


def default_rule() -> AlarmRule:
    """The rule the migration installs (run again here: the test database is flushed between tests)."""
    migration = importlib.import_module("monitoring.migrations.0006_certificate_expiry")
    migration.add_certificate_rule(apps, None)
    migration.add_certificate_rule(apps, None)  # idempotent
    return AlarmRule.objects.get(kind=CERTIFICATE_EXPIRY)


def ids(messages) -> list[str]:
    return [m.id for m in messages]


def use(settings, issued, ca=None):
    settings.TLS_CERTIFICATE, settings.TLS_PRIVATE_KEY = str(issued.chain), str(issued.key)
    settings.TLS_CA_CERTIFICATES = str(ca) if ca else ""


def test_deploy_check_warns_of_a_certificate_expiring_soon_or_expired_not_of_a_fine_one(settings, pki):
    use(settings, pki.issue("fine", days=365), pki.ca_file)
    assert check_tls_files(None) == [] and "pacs.W006" not in ids(tls_deployment_warnings())
    use(settings, pki.issue("soon", days=10))
    [warning] = [w for w in tls_deployment_warnings() if w.id == "pacs.W006"]
    assert "TLS_CERTIFICATE: the certificate CN=soon,O=Test Hospital expires in 10 day(s)" in warning.msg
    use(settings, pki.issue("old", expired=True))
    [warning] = [w for w in tls_deployment_warnings() if w.id == "pacs.W006"]
    assert "CN=old,O=Test Hospital expired on" in warning.msg
    settings.TLS_EXPIRY_WARNING_DAYS = 5
    use(settings, pki.issue("soon", days=10))
    assert "pacs.W006" not in ids(tls_deployment_warnings())


def test_web_without_https_is_a_deploy_warning(settings, pki):
    assert "pacs.W007" in ids(tls_deployment_warnings())
    settings.WEB_TRUSTED_PROXIES = ["10.0.0.7"]
    assert "pacs.W007" not in ids(tls_deployment_warnings())
    settings.WEB_TRUSTED_PROXIES, settings.WEB_TLS = [], True
    use(settings, pki.issue("engine", days=365))
    assert "pacs.W007" not in ids(tls_deployment_warnings())


def test_a_broken_tls_setup_is_an_error(settings, pki, tmp_path):
    engine, other = pki.issue("engine"), pki.issue("other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        ({"TLS_CERTIFICATE": str(tmp_path / "missing.crt"), "TLS_PRIVATE_KEY": str(engine.key)}, "cannot load"),
        ({"TLS_CERTIFICATE": str(engine.cert), "TLS_PRIVATE_KEY": str(other.key)}, "cannot load"),  # not its key
        ({"TLS_CERTIFICATE": str(engine.cert), "TLS_PRIVATE_KEY": ""}, "needs TLS_CERTIFICATE and TLS_PRIVATE_KEY"),
        ({"WEB_TLS": True}, "WEB_TLS=true: a TLS port needs"),
        ({"TLS_CA_CERTIFICATES": str(garbage)}, "TLS_CA_CERTIFICATES="),
        ({"TLS_CA_CERTIFICATES": str(tmp_path / "missing-ca.pem")}, "TLS_CA_CERTIFICATES="),
    ]
    for values, words in cases:
        settings.TLS_CERTIFICATE = settings.TLS_PRIVATE_KEY = settings.TLS_CA_CERTIFICATES = ""
        settings.WEB_TLS = False
        for name, value in values.items():
            setattr(settings, name, value)
        [error] = check_tls_files(None)
        assert error.id == "pacs.E007" and words in error.msg, (values, error.msg)
    use(settings, engine, pki.ca_file)
    settings.WEB_TLS = False
    assert check_tls_files(None) == []


def test_plain_manage_py_check_fails_on_a_key_that_does_not_match(pki, tmp_path):
    env = {**os.environ, "VAR_DIR": str(tmp_path / "var"), "TLS_CERTIFICATE": str(pki.issue("engine").cert),
           "TLS_PRIVATE_KEY": str(pki.issue("other").key)}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and "pacs.E007" in result.stderr, result.stderr


def test_alarm_opens_on_the_console_for_a_certificate_to_renew_and_clears_once_renewed(settings, pki, client):
    r = default_rule()
    assert (r.interface_key, r.enabled) == ("", True)
    now = timezone.now()
    use(settings, pki.issue("engine", days=40), pki.ca_file)
    assert services.evaluate(now)["opened"] == 0  # 40 days left, CA for ten years
    later = now + dt.timedelta(days=11)  # 29 days left: within TLS_EXPIRY_WARNING_DAYS (30)
    assert services.evaluate(later)["opened"] == 1
    alarm = Alarm.objects.get(rule=r, cleared_at__isnull=True)
    assert alarm.interface_key == "TLS_CERTIFICATE CN=engine,O=Test Hospital"
    assert "expires in 29 day(s)" in alarm.message and alarm.last_value == pytest.approx(29.0, abs=0.1)

    client.force_login(user("opal", ADMINISTRATOR))
    page = client.get("/monitoring/").content.decode()
    assert "TLS certificate expiry" in page and "CN=engine,O=Test Hospital" in page

    use(settings, pki.issue("engine", days=365), pki.ca_file)  # renewed, same subject
    assert services.evaluate(later)["cleared"] == 1


def test_expired_and_unreadable_files_are_alarms_each(settings, pki, tmp_path):
    r = default_rule()
    use(settings, pki.issue("old", expired=True), tmp_path / "no-such-ca.pem")
    assert services.evaluate(timezone.now())["opened"] == 2
    alarms = {a.interface_key: a for a in Alarm.objects.filter(rule=r)}
    assert set(alarms) == {"TLS_CERTIFICATE CN=old,O=Test Hospital", "TLS_CA_CERTIFICATES"}
    assert "expired on" in alarms["TLS_CERTIFICATE CN=old,O=Test Hospital"].message
    assert "TLS_CA_CERTIFICATES cannot be read" in alarms["TLS_CA_CERTIFICATES"].message
    # A rule for one setting only sees that file.
    r.interface_key = "TLS_CA_CERTIFICATES"
    r.save()
    assert set(services.conditions(r, timezone.now())) == {"TLS_CA_CERTIFICATES"}


def test_metric_gives_the_seconds_left_of_every_configured_certificate(settings, pki):
    use(settings, pki.issue("soon", days=10), pki.ca_file)
    [family] = [f for f in DatabaseCollector().collect() if f.name == "pacs_tls_certificate_expiry_seconds"]
    left = {(s.labels["setting"], s.labels["subject"]): s.value for s in family.samples}
    assert set(left) == {("TLS_CERTIFICATE", "CN=soon,O=Test Hospital"),
                         ("TLS_CERTIFICATE", "CN=Test Hospital CA,O=Test Hospital"),  # the chain's CA
                         ("TLS_CA_CERTIFICATES", "CN=Test Hospital CA,O=Test Hospital")}
    assert 10 * 86400 - 3600 < left[("TLS_CERTIFICATE", "CN=soon,O=Test Hospital")] <= 10 * 86400
    use(settings, pki.issue("old", expired=True))
    text = render().decode()
    assert 'pacs_tls_certificate_expiry_seconds{setting="TLS_CERTIFICATE",subject="CN=old,O=Test Hospital"} -' in text
