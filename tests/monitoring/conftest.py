"""Fixtures the alarm tests share."""

from __future__ import annotations

import pytest


@pytest.fixture
def fast(settings):
    """Outbox timings for alarm tests: a failed delivery is retried at once (0.01 s), a peer that
    does not answer is given up after 0.5 s.  A module needing more overrides ``fast`` and adds to it."""
    settings.HL7_ORU_CONNECT_TIMEOUT_SECONDS = 0.5
    settings.HL7_ORU_RETRY_BASE_SECONDS = 0.01
    settings.HL7_ORU_RETRY_MAX_SECONDS = 0.01
    return settings
