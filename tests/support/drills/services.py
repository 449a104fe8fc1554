"""What a drill runs and breaks: a PostgreSQL cluster and a Redis server of its own (so that
restarting them disturbs nobody else on the machine), and the engine's processes started from
the Procfile's lines, each in its own process group so that ``kill -9`` takes a whole process
kind down at once, as a crashed container or host would."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from tests.production import deployment
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[3]
VENV_BIN = ROOT / ".venv" / "bin"
PROCESS_KINDS = ("web", "mllp", "dicom", "worker", "beat")


def procfile() -> dict[str, list[str]]:
    """{process kind: argv} of the Procfile, ``python`` being the engine environment's."""
    out = {}
    for name, command in deployment.procfile().items():
        argv = command.split()
        if argv[0] == "python":
            argv[0] = str(VENV_BIN / "python")
        out[name] = argv
    return out


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _as_postgres_user() -> list[str]:
    """PostgreSQL's server refuses to run as root: run its tools as the ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class PrivatePostgres:
    """A PostgreSQL cluster in a temporary directory, on a port of its own, ``fsync`` and
    ``synchronous_commit`` on (the durability the engine's promises rest on).  ``restart()`` is
    an immediate shutdown (no checkpoint: crash recovery from the WAL at the next start)."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.data = self.workdir / "data"
        self.socket_dir = self.workdir / "run"
        self.log = self.workdir / "postgres.log"
        self.restarts = 0

    @staticmethod
    def binaries() -> Path | None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        return Path(found[-1]).parent if found else None

    def _run(self, *argv: str, timeout: float = 120) -> None:
        result = subprocess.run([*_as_postgres_user(), *argv], capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {result.stdout[-1500:]}{result.stderr[-1500:]}")

    def start(self) -> PrivatePostgres:
        binaries = self.binaries()
        if binaries is None:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
        self.bin = binaries
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres")
            shutil.chown(self.socket_dir, "postgres")
            os.chmod(self.workdir, 0o755)
        self._run(str(binaries / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync")
        self._pg_ctl_start()
        return self

    def _pg_ctl_start(self) -> None:
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=on "
                   "-c synchronous_commit=on -c max_connections=200 -c shared_buffers=32MB")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w",
                  "-t", "120", "start")

    def restart(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self._pg_ctl_start()
        self.restarts += 1

    def stop(self) -> None:
        if self.data.exists():
            try:
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)


class PrivateRedis:
    """``redis-server`` on a port of its own with an append-only file fsynced every write (the
    broker's tasks survive its restart); ``restart()`` is ``kill -9`` then a new start on the
    same files."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.restarts = 0

    def start(self) -> PrivateRedis:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "redis.log", "ab")
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while not port_open(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {(self.workdir / 'redis.log').read_text()[-1500:]}")
            time.sleep(0.1)
        return self

    def restart(self) -> None:
        self.kill()
        self.start()
        self.restarts += 1

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    stop = kill

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


class EngineProcesses:
    """The Procfile's processes, each kind in a process group of its own, output to a log per
    start; ``kill(kind)`` is ``kill -9`` of the whole group (master and children), ``start(kind)``
    a new start with the same command line.  ``supervise()`` restarts a process that exited on its
    own, as docker/compose.yaml's ``restart: unless-stopped`` does, and records the exit (the
    drill reports every one: a crash nobody injected is a finding)."""

    def __init__(self, env: dict[str, str], logs: Path, ports: dict[str, int]):
        self.env = env
        self.logs = Path(logs)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.commands = procfile()
        self.ports = ports  # kind -> port it listens on (web, mllp, dicom)
        self.running: dict[str, subprocess.Popen] = {}
        self.starts = dict.fromkeys(self.commands, 0)
        self.kills = dict.fromkeys(self.commands, 0)
        self.exits: list[tuple[str, int, str]] = []  # (kind, return code, last log line): exits nobody caused
        self._lock = threading.Lock()
        self._supervising = threading.Event()

    def logfile(self, kind: str) -> Path:
        return self.logs / f"{kind}-{self.starts[kind]}.log"

    def start(self, kind: str) -> None:
        with self._lock:
            self.starts[kind] += 1
            out = open(self.logfile(kind), "wb")
            self.running[kind] = subprocess.Popen(self.commands[kind], cwd=ROOT, env=self.env, stdout=out,
                                                  stderr=subprocess.STDOUT, start_new_session=True)

    def start_all(self) -> None:
        for kind in self.commands:
            self.start(kind)

    def kill(self, kind: str) -> None:
        with self._lock:
            process = self.running.get(kind)
            if process is None:
                return
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(30)
            self.kills[kind] += 1
            del self.running[kind]

    def restart(self, kind: str) -> None:
        self.kill(kind)
        self.start(kind)

    def alive(self, kind: str) -> bool:
        process = self.running.get(kind)
        return process is not None and process.poll() is None

    def ready(self, kind: str) -> bool:
        """Listening (the listeners and the web) or saying so in its log (worker, beat)."""
        if not self.alive(kind):
            return False
        if kind in self.ports:
            return port_open(self.ports[kind])
        text = self.logfile(kind).read_text(errors="replace")
        return " ready." in text if kind == "worker" else "beat: Starting" in text

    def supervise(self) -> None:
        def loop() -> None:
            while self._supervising.is_set():
                with self._lock:
                    dead = [(kind, p) for kind, p in self.running.items() if p.poll() is not None]
                    for kind, process in dead:
                        lines = self.logfile(kind).read_text(errors="replace").strip().splitlines()
                        self.exits.append((kind, process.returncode, lines[-1][:300] if lines else ""))
                        del self.running[kind]
                for kind, _ in dead:
                    self.start(kind)
                time.sleep(0.5)

        self._supervising.set()
        threading.Thread(target=loop, name="supervisor", daemon=True).start()

    def wait_ready(self, kind: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready(kind):
            if not self._supervising.is_set() and kind in self.running and not self.alive(kind):
                raise AssertionError(f"{kind} exited at start:\n{self.tail(kind)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{kind} not ready within {timeout} s:\n{self.tail(kind)}")
            time.sleep(0.2)

    def ensure_running(self) -> None:
        """Every kind ready (the supervisor starts again whatever exited)."""
        for kind in self.commands:
            self.wait_ready(kind)

    def tail(self, kind: str, chars: int = 3000) -> str:
        path = self.logfile(kind)
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def all_logs(self) -> dict[str, str]:
        return {p.name: p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log"))}

    def stop(self) -> None:
        self._supervising.clear()
        time.sleep(0.6)  # the supervisor's last round is over: it starts nothing more
        for kind in list(self.running):
            process = self.running[kind]
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 20
        for process in list(self.running.values()):
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
            # Children left behind by a master killed earlier share its group: none may outlive the drill.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.running.clear()
