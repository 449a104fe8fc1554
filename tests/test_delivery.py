"""The rules VNA routing and the ORU outbox share (``project.delivery``): backoff, leases and the
forms of the destinations declared in the environment, checked at start with the same parser
the router uses."""

from __future__ import annotations

import datetime as dt
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from project.delivery import backoff, leases
from project.delivery.destinations import parse_mllp, parse_vna

ROOT = Path(__file__).resolve().parent.parent


def test_backoff_doubles_per_failure_up_to_the_cap_with_jitter():
    rng = random.Random(3)
    for failures, full in [(0, 10.0), (1, 10.0), (2, 20.0), (3, 40.0), (7, 100.0), (30, 100.0)]:
        values = [backoff.backoff_seconds(failures, base=10.0, cap=100.0, rng=rng) for _ in range(200)]
        assert full * 0.5 <= min(values) and max(values) <= full
        assert max(values) - min(values) > full * 0.3


def test_next_attempt_after_a_transient_failure_or_none_at_the_cap():
    now = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
    rng = random.Random(5)
    for attempts in (1, 2, 4):
        retry = backoff.next_attempt(attempts, max_attempts=5, base=10.0, cap=100.0, now=now, rng=rng)
        ceiling = min(100.0, 10.0 * 2 ** (attempts - 1))
        assert ceiling * 0.5 <= retry.delay <= ceiling
        assert retry.at == now + dt.timedelta(seconds=retry.delay)
    assert backoff.next_attempt(5, max_attempts=5, base=10.0, cap=100.0, now=now) is None
    assert backoff.next_attempt(9, max_attempts=5, base=10.0, cap=100.0, now=now) is None
    unbounded = backoff.next_attempt(50, max_attempts=None, base=10.0, cap=100.0, now=now)
    assert unbounded is not None and 50.0 <= unbounded.delay <= 100.0


def test_a_lease_is_held_until_it_ends():
    now = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
    end = leases.until(now, 30)
    assert end == now + dt.timedelta(seconds=30)
    assert leases.held(end, now) and not leases.held(end, end) and not leases.held(None, now)


def test_vna_destination_forms():
    dicom, tls, stow = parse_vna(" dicom://VNA@h1:104 , dicoms://ARCH@h2:2762/,stow+https://u:p@h3:8443/dicom-web/")
    assert (dicom["kind"], dicom["ae_title"], dicom["host"], dicom["port"], dicom["tls"]) == ("dicom", "VNA", "h1", 104,
                                                                                            False)
    assert (tls["ae_title"], tls["port"], tls["tls"]) == ("ARCH", 2762, True)
    assert (stow["kind"], stow["url"], stow["username"], stow["password"]) == (
        "stow", "https://h3:8443/dicom-web", "u", "p")
    assert stow["name"] == "env:stow+https://h3:8443/dicom-web"  # the credentials are not in the name
    for bad in ("ftp://h/x", "dicom://AE_TITLE_LONGER_THAN_16@h:1", "dicom://VNA@h", "stow+http:///path"):
        with pytest.raises(ValueError, match="is neither dicom"):
            parse_vna(bad)


def test_a_vna_that_takes_hl7_adt_names_its_mllp_receiver():
    dicom, stow, plain = parse_vna("dicom://VNA@h1:104?adt=mllp://h1:2575,"
                                   "stow+https://h3/dicom-web?adt=mllps://adt.h3:2576, dicom://VNA@h2:104")
    assert (dicom["adt_host"], dicom["adt_port"], dicom["adt_tls"]) == ("h1", 2575, False)
    assert dicom["name"] == "env:dicom://VNA@h1:104"  # the same row with or without the option
    assert (stow["url"], stow["adt_host"], stow["adt_port"], stow["adt_tls"]) == (
        "https://h3/dicom-web", "adt.h3", 2576, True)
    assert (plain["adt_host"], plain["adt_port"], plain["adt_tls"]) == ("", None, False)
    for bad in ("dicom://VNA@h:104?adt=http://h:1", "dicom://VNA@h:104?adt=mllp://h",
                "dicom://VNA@h:104?adt=mllp://h:0", "dicom://VNA@h:104?hl7=mllp://h:1"):
        with pytest.raises(ValueError, match="adt=mllp://host:port"):
            parse_vna(bad)


@pytest.mark.parametrize("value,message", [
    ("ehr", "expected name=mllp://host:port"),
    ("ehr=http://h:1", "the address must be mllp://host:port or mllps://host:port"),
    ("ehr=mllp://h", "a port between 1 and 65535 is required"),
    ("ehr=mllp://h:1?colour=red", "unknown option 'colour'"),
    ("ehr=mllp://h:1?version=2.4", "version must be one of 2.5.1, 2.3.1"),
    ("ehr=mllp://h:1?text=ST", "text must be TX or FT"),
    ("ehr=mllp://h:1?timeout=soon", "timeout must be a number of seconds"),
    ("ehr=mllp://h:1,ehr=mllp://h:2", "destination 'ehr' is declared twice"),
])
def test_mllp_destination_errors_name_the_problem(value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_mllp(value, versions=("2.5.1", "2.3.1"), text_value_types=("TX", "FT"))


@pytest.mark.socket  # the engine's own process (manage.py)
def test_the_start_check_of_vna_destinations_is_the_routers_parser(tmp_path):
    """A ``dicoms://`` destination (documented in .env.example) passes the start check; an entry
    the router cannot parse is named by pacs.E001."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update(VAR_DIR=str(tmp_path / "var"), VNA_DESTINATIONS="dicoms://ARCH@vna.example:2762,ftp://nowhere")
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    out = result.stderr + result.stdout
    assert re.search(r"pacs\.E001.*VNA_DESTINATIONS='ftp://nowhere' is neither", out)
    assert "dicoms://ARCH" not in out
