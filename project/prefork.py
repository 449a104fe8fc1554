"""Several listener processes on one port (``run_mllp --workers N``, ``run_dicom --workers N``).

Python runs one core per process; listeners share the port with SO_REUSEPORT and the kernel
spreads connections over them.  State is in the database, so the processes share nothing else.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from django.db import connections


def hold_termination() -> list[int]:
    """Hold SIGTERM from now until the command installs its own handler (``release_termination``).

    A listener takes its port and forks its workers before it can install the handler that stops
    them: a SIGTERM in between (a supervisor stopping a process that is still starting) would end
    the parent at once and leave its workers serving, unsupervised. Held, the signal is acted on
    as soon as the handler is there."""
    held: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: held.append(signum))
    return held


def release_termination(held: list[int], handler: Callable) -> None:
    """Install ``handler`` for SIGTERM and call it now if one arrived while it was held."""
    signal.signal(signal.SIGTERM, handler)
    if held:
        handler(held[0], None)


def fork_workers(count: int, serve: Callable[[], None]) -> list[int]:
    """Fork ``count`` children that each run ``serve()`` until SIGTERM; return their pids.

    Database connections are closed first: none may be shared across a fork.
    """
    connections.close_all()
    children = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                serve()
            finally:
                os._exit(0)
        children.append(pid)
    return children


def signal_workers(children: list[int]) -> None:
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def stop_workers(children: list[int]) -> None:
    """SIGTERM every child and reap it."""
    signal_workers(children)
    for pid in children:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
