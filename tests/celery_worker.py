"""A real ``celery -A project worker`` process for tests, in its own process group, logging to a
file per start (tests read it when they fail)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
