"""``manage.py run_dicom`` as the README starts it: a real process (and --workers sharing the port)."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.support.dicom import DCMTK_ENV, run_dicom_env, start_run_dicom, stop_process
from tests.support.net import dcmtk_tool, free_port


def _echo(port: int) -> subprocess.CompletedProcess:
    return subprocess.run([dcmtk_tool("echoscu"), "-aet", "MOD1", "-aec", "PACS", "-to", "5", "127.0.0.1", str(port)],
                          capture_output=True, text=True, env=DCMTK_ENV, timeout=30)


@pytest.mark.parametrize("workers", [1, 2])
def test_run_dicom_serves_and_stops_on_sigterm(transactional_db, workers):
    port = free_port()
    proc = start_run_dicom(port, run_dicom_env(), "--workers", str(workers), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while _echo(port).returncode != 0:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "run_dicom did not answer C-ECHO"
            time.sleep(0.3)
        assert all(_echo(port).returncode == 0 for _ in range(6))
    finally:
        if not stop_process(proc):
            pytest.fail("run_dicom did not stop on SIGTERM")
    assert _echo(port).returncode != 0  # nobody listens any more (no orphaned worker)
