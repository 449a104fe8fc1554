"""The faults of a drill, at moments drawn from its seed.

``KillLoop``: ``count`` times, once the process kind is ready again, a random pause then
``kill -9`` of the whole kind and an immediate new start (a supervisor's restart policy).
``Outage``: at a random moment, one fault held for a while and then undone: PostgreSQL or Redis
restarted, the VNA stopped, a sink down or answering AE.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field


@dataclass
class FaultLog:
    events: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: float = field(default_factory=time.monotonic)

    def add(self, what: str) -> None:
        with self.lock:
            self.events.append((round(time.monotonic() - self.started, 2), what))


class KillLoop(threading.Thread):
    def __init__(self, kind: str, count: int, processes, rng: random.Random, gap: tuple[float, float],
                 log: FaultLog, abort: threading.Event):
        super().__init__(name=f"kill-{kind}", daemon=True)
        self.kind = kind
        self.count = count
        self.processes = processes
        self.rng = rng
        self.gap = gap
        self.log = log
        self.abort = abort
        self.done = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for _ in range(self.count):
                self.processes.wait_ready(self.kind, timeout=300)
                if self.abort.wait(self.rng.uniform(*self.gap)):
                    return
                self.processes.kill(self.kind)
                self.log.add(f"kill -9 {self.kind}")
                self.processes.start(self.kind)
                self.done += 1
            self.processes.wait_ready(self.kind, timeout=300)
        except BaseException as exc:  # noqa: BLE001 - reported by the drill
            self.error = exc
            self.abort.set()


class Outage(threading.Thread):
    """``begin()`` at ``at`` seconds after the start, ``end()`` ``duration`` seconds later."""

    def __init__(self, name: str, at: float, duration: float, begin, end, log: FaultLog, abort: threading.Event):
        super().__init__(name=f"outage-{name}", daemon=True)
        self.label = name
        self.at = at
        self.duration = duration
        self.begin = begin
        self.end = end
        self.log = log
        self.abort = abort
        self.ended_at: float | None = None  # time.monotonic() when undone
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.abort.wait(self.at)
            self.log.add(f"{self.label}: begins")
            try:
                self.begin()
                self.abort.wait(self.duration)
            finally:
                self.end()
                self.ended_at = time.monotonic()
                self.log.add(f"{self.label}: ends")
        except BaseException as exc:  # noqa: BLE001 - reported by the drill
            self.error = exc
            self.abort.set()
