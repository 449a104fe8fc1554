"""Fixtures of the audit export tests."""

from __future__ import annotations

import pytest

from tests.support.rsyslog import Rsyslog


@pytest.fixture
def rsyslog(tmp_path):
    """A real Audit Record Repository: rsyslogd with plain TCP and UDP inputs on free ports
    (RFC 5425 framing over TCP, RFC 5426 over UDP), stopped after the test.  Its name is one of
    tests/conftest.py's SOCKET_FIXTURES: a test using it is a socket test."""
    repo = Rsyslog(tmp_path / "rsyslog")
    repo.start()
    yield repo
    repo.stop()
