"""A real ``celery -A project worker`` process for tests, in its own process group, logging to a
file per start (tests read it when they fail), and the two configurations the tests run it
with: the routing worker (solo pool) and the ORU worker (embedded beat, short retry timings)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from tests.support.postgres import database_url
from tests.support.waiting import wait_for

#: The Redis database of this test run (the tests empty it: never the default of another run).
BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
ROOT = Path(__file__).resolve().parents[2]


class CeleryWorker:
    def __init__(self, workdir: Path, env: dict, *, name: str, args: list[str]):
        self.workdir = workdir
        self.env = env
        self.name = name
        self.args = args
        self.process: subprocess.Popen | None = None
        self.count = 0
        self.logfile = workdir / f"{name}-0.log"

    def start(self, timeout: float = 60.0) -> CeleryWorker:
        self.count += 1
        self.logfile = self.workdir / f"{self.name}-{self.count}.log"
        with open(self.logfile, "wb") as out:
            self.process = subprocess.Popen(
                [str(ROOT / ".venv/bin/celery"), "-A", "project", "worker", "--loglevel", "INFO",
                 "-n", f"{self.name}{self.count}@%h", *self.args],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log():
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"celery worker did not start:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children), as a crashed host would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-n:])

    def finished(self, task: str) -> int:
        """How many runs of ``task`` (its Celery name) the worker has logged as finished (Celery's
        INFO line "Task <name>[<id>] succeeded in ..." or "... raised ...")."""
        return len(re.findall(rf"Task {re.escape(task)}\[[^\]]+\] (?:succeeded|raised|retry)", self.log()))

    def wait_finished(self, task: str, count: int, timeout: float = 30.0) -> None:
        """Until the worker has finished ``count`` runs of ``task``: the event that shows a task
        has run (and done whatever it does), where a test would otherwise sleep and hope."""
        wait_for(lambda: self.finished(task) >= count, timeout, message=f"{count} runs of {task}", detail=self.tail)


def routing_worker(workdir: Path, env: dict) -> CeleryWorker:
    """The routing tests' worker: solo pool, one task at a time."""
    return CeleryWorker(workdir, env, name="h4test", args=["-P", "solo", "-c", "1", "--without-heartbeat",
                                                           "--without-gossip", "--without-mingle"])


#: The ORU worker's short retry and sweep timings (HL7_ORU_* settings).
ORU_WORKER_ENV = {
    "HL7_ORU_RETRY_BASE_SECONDS": "0.3",
    "HL7_ORU_RETRY_MAX_SECONDS": "1.5",
    "HL7_ORU_SWEEP_SECONDS": "1",
    "HL7_ORU_REQUEUE_AFTER_SECONDS": "2",
    "HL7_ORU_CONNECT_TIMEOUT_SECONDS": "1",
    "HL7_ORU_ACK_TIMEOUT_SECONDS": "3",
    "HL7_ORU_MAX_ATTEMPTS": "4",
}


def oru_worker(tmp: Path, name: str) -> CeleryWorker:
    """A real ``celery -A project worker`` with embedded beat (the outbox sweep), on the test database."""
    from django.conf import settings

    env = {**os.environ, **ORU_WORKER_ENV, "DATABASE_URL": database_url(),
           "CELERY_BROKER_URL": settings.CELERY_BROKER_URL, "VAR_DIR": str(tmp / "var"), "PYTHONUNBUFFERED": "1"}
    return CeleryWorker(tmp, env, name=name, args=["-B", "--concurrency", "2", "--without-gossip", "--without-mingle",
                                                   "-s", str(tmp / f"{name}-beat-schedule")])
