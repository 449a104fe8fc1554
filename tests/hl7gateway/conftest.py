"""Fixtures the outbound HL7 tests share: a real MLLP peer, short outbox timings, an operator."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from project.access import ADMINISTRATOR
from tests.factories import oru as h
from tests.support.mllp_sink import MLLPSink


@pytest.fixture
def sink():
    """A real MLLP receiver on an ephemeral port (tests/support/mllp_sink.py), answering AA unless
    told otherwise (``mode``, ``script``)."""
    with MLLPSink() as s:
        yield s


@pytest.fixture
def fast(settings):
    """Outbox timings short enough for a test: the first retry after 2 s, at most 10 s apart, a
    1 s connect timeout.  A module needing more overrides ``fast`` and adds to it."""
    settings.HL7_ORU_RETRY_BASE_SECONDS = 2.0
    settings.HL7_ORU_RETRY_MAX_SECONDS = 10.0
    settings.HL7_ORU_CONNECT_TIMEOUT_SECONDS = 1.0
    return settings


@pytest.fixture
def operator(client):
    """The test client logged in as an administrator (the outbound and charges pages)."""
    user = h.radiologist("operator", first_name="Olga", last_name="Operator")
    user.groups.add(Group.objects.get_or_create(name=ADMINISTRATOR)[0])
    client.force_login(user)
    client.user = user
    return client
