"""Ports and third-party tools of the socket tests."""

from __future__ import annotations

import os
import socket

import pytest


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a process that must be told its port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dcmtk_tool(name: str) -> str:
    """dcmtk's tool by full path: pynetdicom installs scripts of the same names in the venv."""
    path = f"/usr/bin/{name}"
    if not os.path.exists(path):
        pytest.fail(f"dcmtk's {name} is not installed at {path} (apt-get install dcmtk; make test does it)")
    return path
