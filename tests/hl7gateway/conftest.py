"""Fixtures of the hl7gateway tests."""

from __future__ import annotations

import pytest

from hl7gateway.server import MLLPServer


@pytest.fixture
def listener():
    """``listener(**options)`` starts an ``MLLPServer`` on 127.0.0.1, port 0; all stop at the end."""
    servers = []

    def start(**kwargs) -> MLLPServer:
        server = MLLPServer("127.0.0.1", 0, **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
