"""One drill from start to table: services, peers, the engine's processes, traffic under faults,
the drain, the tally.  Used by the short drill test (tests/drills) and by ``make drills``."""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from tests.support.drills import tally as tallying
from tests.support.drills.chaos import FaultLog, KillLoop, Outage
from tests.support.drills.proxy import DelayProxy
from tests.support.drills.services import ROOT, VENV_BIN, EngineProcesses, PrivatePostgres, PrivateRedis
from tests.support.drills.traffic import DicomSender, HL7Sender, ReportSigner
from tests.support.mllp_sink import AA, AE, AR, MLLPSink
from tests.support.net import free_port
from tests.support.orthanc import OrthancProcess

#: Outages a drill can hold (each once, at a seeded moment).
OUTAGES = ("postgres", "redis", "vna", "ehr-down", "billing-ae", "billing-ar", "disk-full", "slow-network")
#: The senders' ACK timeout, and the delay of the slow network: longer, so every ACK is late.
ACK_TIMEOUT = 10.0
SLOW_NETWORK_DELAY = 12.0


@dataclass
class DrillConfig:
    seed: int
    workdir: Path
    kills: dict[str, int]  # process kind -> kill -9 count
    outages: tuple[str, ...] = ()
    outage_seconds: float = 20.0
    kill_gap: tuple[float, float] = (0.5, 3.0)  # seconds between ready and the next kill of a kind
    hl7_senders: int = 2
    hl7_minimum: int = 20  # messages per sender at least
    patients: int = 6
    dicom_images: int = 4
    dicom_studies: int = 30  # at most
    reports: int = 30  # orders whose two reports are signed, at most
    drain_timeout: float = 600.0
    spread: bool = False  # exams and reports spread over the kill phase (not as fast as answered)
    settings: dict[str, str] = field(default_factory=dict)  # engine settings over the drill's defaults

    def command(self) -> str:
        kills = ",".join(f"{k}={n}" for k, n in self.kills.items())
        parts = [f"--seed {self.seed}", f"--kills {kills}", f"--kill-gap {self.kill_gap[0]:g},{self.kill_gap[1]:g}"]
        if self.outages:
            parts.append(f"--outages {','.join(self.outages)} --outage-seconds {self.outage_seconds:g}")
        parts += [f"--senders {self.hl7_senders}", f"--minimum {self.hl7_minimum}",
                  f"--studies {self.dicom_studies}", f"--images {self.dicom_images}", f"--reports {self.reports}"]
        if self.spread:
            parts.append("--spread")
        return " ".join(parts)


#: The engine's timings in a drill: short sweeps, retries and leases so that a drill's minutes
#: hold what a site's hours would; attempts high enough that no outage fails a message for good.
DRILL_SETTINGS = {
    "STUDY_QUIET_PERIOD_SECONDS": "3",
    "IMAGING_SWEEP_SECONDS": "2",
    "TRANSFER_RETRY_BASE_SECONDS": "0.5",
    "TRANSFER_RETRY_MAX_SECONDS": "4",
    "TRANSFER_LEASE_SECONDS": "20",
    "TRANSFER_MAX_ATTEMPTS": "1000",
    "STORAGE_COMMITMENT_TIMEOUT_SECONDS": "30",
    "HL7_ORU_RETRY_BASE_SECONDS": "0.3",
    "HL7_ORU_RETRY_MAX_SECONDS": "3",
    "HL7_ORU_SWEEP_SECONDS": "2",
    "HL7_ORU_REQUEUE_AFTER_SECONDS": "10",
    "HL7_ORU_CONNECT_TIMEOUT_SECONDS": "2",
    "HL7_ORU_ACK_TIMEOUT_SECONDS": "10",
    "HL7_ORU_MAX_ATTEMPTS": "1000",
    "CELERY_VISIBILITY_TIMEOUT": "60",
    "WEB_WORKERS": "2",
    "DEBUG": "false",
    "LOG_LEVEL": "INFO",
}


@dataclass
class DrillResult:
    config: DrillConfig
    tally: tallying.Tally
    faults: list[tuple[float, str]]
    kills: dict[str, int]
    skipped: list[str]
    wall_seconds: float
    traffic_seconds: float
    errors: list[str]

    def table(self) -> str:
        return tallying.table(self.tally)


class Drill:
    def __init__(self, config: DrillConfig):
        self.config = config
        self.rng = random.Random(config.seed)
        self.tag = f"{config.seed % 0xFFFF:04X}"
        self.work = Path(config.workdir)
        self.skipped: list[str] = []
        self.errors: list[str] = []
        self.cleanups: list = []

    # ------------------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        # The cluster's directory outside the work directory: PostgreSQL runs as its own user, which
        # must reach it (pytest's temporary directories are private to the user running the tests).
        pg_dir = Path(tempfile.mkdtemp(prefix="drill-postgres-"))
        self.cleanups.append(lambda: remove(pg_dir))
        self.postgres = PrivatePostgres(pg_dir)
        self.cleanups.append(self.postgres.stop)
        self.postgres.start()
        self.redis = PrivateRedis(self.work / "redis").start()
        self.cleanups.append(self.redis.stop)
        database_url = self.postgres.create_database("pacs_drill")
        self.database_url = database_url

        self.ports = {"web": free_port(), "mllp": free_port(), "dicom": free_port()}
        self.orthanc = OrthancProcess(self.work / "orthanc", engine_aet="PACS", engine_port=self.ports["dicom"]).start()
        self.cleanups.append(self.orthanc.stop)
        self.vna_lock = threading.Lock()
        self.vna_planned_down = False
        self.peer_exits: list[str] = []
        self.finished = threading.Event()
        self.cleanups.append(self.finished.set)
        threading.Thread(target=self._supervise_vna, name="vna-supervisor", daemon=True).start()
        self.sinks = {"ehr": MLLPSink().start(), "billing": MLLPSink().start()}
        for sink in self.sinks.values():
            self.cleanups.append(sink.down)
        # The EHR's two links (its orders in, its results out) pass a relay that can slow them.
        self.intake_link = DelayProxy(self.ports["mllp"])
        self.ehr_link = DelayProxy(self.sinks["ehr"].port)
        self.cleanups += [self.intake_link.stop, self.ehr_link.stop]
        destinations = {"ehr": f"mllp://127.0.0.1:{self.ehr_link.port}", "billing": self.sinks["billing"].url}

        self.storage = self.work / "var" / "storage"
        self.storage.mkdir(parents=True, exist_ok=True)
        if "disk-full" in self.config.outages:
            self._small_disk()
        env = {key: value for key, value in os.environ.items()
               if key in ("HOME", "LANG", "LC_ALL", "TZ", "USER", "TMPDIR", "SECRET_KEY", "TCP_NODELAY")}
        env.update(DRILL_SETTINGS)
        env.update({
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PYTHONUNBUFFERED": "1",
            "SECRET_KEY": os.environ.get("SECRET_KEY") or "drill-only-secret-key-5b1e0c7d9a3f4e2b8c6d",
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": self.redis.url(0),
            "WEB_PORT": str(self.ports["web"]), "HL7_MLLP_PORT": str(self.ports["mllp"]),
            "DICOM_PORT": str(self.ports["dicom"]),
            "VNA_DESTINATIONS": f"dicom://{self.orthanc.aet}@127.0.0.1:{self.orthanc.dicom_port}",
            "HL7_ORU_DESTINATIONS": ",".join(f"{name}={url}" for name, url in destinations.items()),
            "VAR_DIR": str(self.work / "var"), "STORAGE_DIR": str(self.storage),
            "STATIC_ROOT": str(self.work / "static"),
        })
        env.update(self.config.settings)
        self.env = env
        self._manage("migrate", "--noinput")
        self.processes = EngineProcesses(env, self.work / "logs", self.ports)
        self.cleanups.append(self.processes.stop)
        self.processes.start_all()
        for kind in self.processes.commands:
            self.processes.wait_ready(kind, timeout=240)
        self.processes.supervise()
        self._manage("shell", "-c",
                     "from django.contrib.auth.models import Group, User\n"
                     "from project.access import RADIOLOGIST\n"
                     "u = User.objects.create_user('drill_rad', first_name='Rad', last_name='Drill')\n"
                     "u.groups.add(Group.objects.get(name=RADIOLOGIST))\n")
        self.token = self._manage("create_api_token", "drill_rad", "--name", "drill dictation").strip()

    def _manage(self, *args: str, timeout: float = 300) -> str:
        result = subprocess.run([str(VENV_BIN / "python"), "manage.py", *args], cwd=ROOT, env=self.env,
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise AssertionError(f"manage.py {args[0]} failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}")
        return result.stdout

    # ------------------------------------------------------------------------------ faults
    def _vna_down(self) -> None:
        with self.vna_lock:
            self.vna_planned_down = True
            self.orthanc.stop()

    def _vna_up(self) -> None:
        with self.vna_lock:
            self.orthanc.start()
            self.vna_planned_down = False

    def _supervise_vna(self) -> None:
        """The VNA's own supervisor: an Orthanc that exits on its own (not stopped by the drill)
        is started again, and the exit recorded (a crash of the peer, not of the engine)."""
        while not self.finished.wait(1.0):
            with self.vna_lock:
                process = self.orthanc.process
                if self.vna_planned_down or process is None or process.poll() is None:
                    continue
                lines = (self.work / "orthanc" / "orthanc.log").read_text(errors="replace").strip().splitlines()
                self.peer_exits.append(f"orthanc exited {process.returncode}: {lines[-1][:200] if lines else ''}")
                self.orthanc.process = None
                try:
                    self.orthanc.start()
                except RuntimeError as exc:
                    self.errors.append(f"the VNA did not start again: {exc}")

    def _small_disk(self) -> None:
        """The image store on a file system of its own (a 32 MiB tmpfs) that the disk-full fault
        can fill without touching anyone else's disk."""
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "drill-store", str(self.storage)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            self.skipped.append(f"disk-full: cannot mount a file system for the store ({result.stderr.strip()})")
            return
        self.cleanups.append(lambda: subprocess.run(["umount", "-l", str(self.storage)], capture_output=True))
        self.store_mounted = True

    def _fill_disk(self) -> None:
        fd = os.open(self.storage / "drill-filler", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for size in (1 << 20, 1 << 12, 1):
                try:
                    while os.write(fd, b"\0" * size):
                        pass
                except OSError:  # ENOSPC: this size no longer fits
                    pass
        finally:
            os.close(fd)

    def _free_disk(self) -> None:
        (self.storage / "drill-filler").unlink(missing_ok=True)

    def _outage(self, name: str, at: float, log: FaultLog, abort: threading.Event) -> Outage | None:
        seconds = self.config.outage_seconds
        if name == "postgres":
            return Outage(name, at, 0.0, self.postgres.restart, lambda: None, log, abort)
        if name == "redis":
            return Outage(name, at, 0.0, self.redis.restart, lambda: None, log, abort)
        if name == "vna":
            return Outage(name, at, seconds, self._vna_down, self._vna_up, log, abort)
        if name == "ehr-down":
            sink = self.sinks["ehr"]
            return Outage(name, at, seconds, sink.down, sink.up, log, abort)
        if name == "billing-ae":
            sink = self.sinks["billing"]
            return Outage(name, at, seconds, lambda: setattr(sink, "mode", AE), lambda: setattr(sink, "mode", AA),
                          log, abort)
        if name == "billing-ar":
            sink = self.sinks["billing"]
            return Outage(name, at, seconds, lambda: setattr(sink, "mode", AR), lambda: setattr(sink, "mode", AA),
                          log, abort)
        if name == "slow-network":
            def slow(delay: float):
                return lambda: [setattr(link, "delay", delay) for link in (self.intake_link, self.ehr_link)]

            return Outage(name, at, max(seconds, SLOW_NETWORK_DELAY * 2), slow(SLOW_NETWORK_DELAY), slow(0.0),
                          log, abort)
        if name == "disk-full":
            if not getattr(self, "store_mounted", False):
                return None
            return Outage(name, at, seconds, self._fill_disk, self._free_disk, log, abort)
        raise ValueError(f"unknown outage {name!r} (one of {', '.join(OUTAGES)})")

    # ------------------------------------------------------------------------------ the drill
    def run(self) -> DrillResult:
        started = time.monotonic()
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
            self.cleanups.append(lambda: [signal.signal(sig, handler) for sig, handler in previous.items()])
            signal.signal(signal.SIGTERM, _interrupted)  # as Ctrl-C: the clean-up below runs
        try:
            self._setup()
            return self._run(started)
        finally:
            # A second Ctrl-C or SIGTERM must not cut the clean-up short: every process stopped,
            # the private servers too, nothing left running.
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            for cleanup in reversed(self.cleanups):
                try:
                    cleanup()
                except Exception as exc:  # noqa: BLE001 - every clean-up runs, the first failure is kept
                    self.errors.append(f"clean-up: {exc}")

    def _run(self, started: float) -> DrillResult:
        config = self.config
        log = FaultLog()
        abort = threading.Event()
        stop = threading.Event()
        lock = threading.Lock()
        counter = itertools.count(1)

        def next_number() -> int:
            with lock:
                return next(counter)

        # A kill cycle takes the gap and about two seconds of start-up: the kill phase's length,
        # over which --spread paces the exams and the reports so that every outage meets them.
        phase = max([n * (sum(config.kill_gap) / 2 + 2) for n in config.kills.values()] + [30.0])
        signer = ReportSigner("signer", self.ports["web"], lambda: self.token, stop, config.reports,
                              pace=phase / max(config.reports, 1) if config.spread else 0.0)
        dicom = DicomSender("modality", self.ports["dicom"], self.work / "images", config.dicom_images, stop,
                            config.dicom_studies, pace=phase / max(config.dicom_studies, 1) if config.spread else 0.0)

        def applied(message) -> None:
            signer.offer(message)
            dicom.offer(message)

        senders = [HL7Sender(f"ehr-{i}", self.intake_link.port, self.tag, next_number, config.patients, stop,
                             config.hl7_minimum, applied, ack_timeout=ACK_TIMEOUT) for i in range(config.hl7_senders)]
        if "slow-network" in config.outages:
            self.skipped.append("slow-network: a delaying TCP relay on the EHR's links instead of tc netem on the "
                                "loopback interface, which would slow every process of this shared machine")
        killers = [KillLoop(kind, n, self.processes, random.Random(self.rng.random()), config.kill_gap, log, abort)
                   for kind, n in config.kills.items() if n]
        # Outages at moments spread over the expected length of the kill phase.
        expected = max([n * (sum(config.kill_gap) / 2 + 4) for n in config.kills.values()] + [30.0])
        outages = [self._outage(name, self.rng.uniform(5, max(6.0, expected * 0.6)), log, abort)
                   for name in config.outages]
        outages = [o for o in outages if o is not None]
        traffic_started = time.monotonic()
        for thread in [*senders, signer, dicom, *killers, *outages]:
            thread.start()
        for thread in [*killers, *outages]:
            thread.join()
        last_fault = time.monotonic()
        stop.set()
        for thread in senders:
            thread.join(timeout=900)
        signer.join(timeout=900)
        dicom.join(timeout=900)
        traffic_seconds = time.monotonic() - traffic_started
        for thread in [*senders, signer, dicom, *killers, *outages]:
            if thread.is_alive():
                self.errors.append(f"{thread.name} still running after the traffic phase")
            if getattr(thread, "error", None) is not None:
                self.errors.append(f"{thread.name}: {thread.error!r}")
        for study in dicom.studies:
            if not study.mwl_answered or not study.mpps_created or not study.mpps_completed:
                self.errors.append(f"exam {study.accession}: worklist answered {study.mwl_answered}, MPPS created "
                                   f"{study.mpps_created or 'never'}, completed {study.mpps_completed or 'never'} "
                                   f"({study.failures[-3:]})")
        for accession, error in signer.unsigned:
            self.errors.append(f"report {accession} not signed: {error}")

        # The drain: every process up, every peer up; until each signed report's ORU is settled
        # and every study is archived.
        self.processes.ensure_running()
        signed = list(signer.signed)
        drained = self._drain({s.study_instance_uid for s in dicom.studies})
        drain_seconds = time.monotonic() - max([last_fault] + [o.ended_at or 0 for o in outages])
        if not drained:
            self.errors.append(f"not drained within {config.drain_timeout:g} s: {self._backlog()}")

        tally = tallying.Tally()
        with psycopg.connect(self.database_url, autocommit=True) as db:
            outcomes = [o for sender in senders for o in sender.outcomes]
            tallying.count_hl7(tally, db, outcomes)
            tallying.count_worklist(tally, dicom.studies)
            tallying.count_mpps(tally, db, dicom.studies)
            success = tallying.count_dicom(tally, db, dicom.studies, self.storage)
            tallying.count_vna(tally, db, self.orthanc.url, success)
        tallying.count_oru(tally, signed, self.sinks)
        tally.figures["drain_seconds"] = round(drain_seconds, 1) if drained else f">{config.drain_timeout:g}"
        tally.figures["hl7_sends"] = sum(o.sends for o in outcomes)
        tally.figures["storescu_runs"] = sum(s.runs for s in dicom.studies)
        tally.figures["sign_requests"] = signer.requests
        tally.figures["unexpected_exits"] = len(self.processes.exits)
        tally.figures["operator_retries"] = getattr(self, "operator_retries", 0)
        tally.figures["peer_exits"] = len(self.peer_exits)
        for line in self.peer_exits:
            tally.note("peer_exits", line)
        for kind, code, line in self.processes.exits:
            tally.note("unexpected_exits", f"{kind} exited {code}: {line}")
        return DrillResult(config, tally, log.events, dict(self.processes.kills), self.skipped,
                           time.monotonic() - started, traffic_seconds, self.errors)

    def _backlog(self) -> dict:
        with psycopg.connect(self.database_url, autocommit=True) as db:
            oru = dict(db.execute("SELECT status, count(*) FROM hl7gateway_outboundmessage GROUP BY status").fetchall())
            studies = dict(db.execute("SELECT status, count(*) FROM pacs_study GROUP BY status").fetchall())
            transfers = dict(db.execute("SELECT status, count(*) FROM pacs_transfer GROUP BY status").fetchall())
        return {"oru": oru, "studies": studies, "transfers": transfers}

    def _operator_retries_failed(self) -> None:
        """What the operator does once a destination that rejected messages (AR) is fixed: retry
        each failed message (same bytes, same MSH-10), through the engine's operator action."""
        self.operator_retries = getattr(self, "operator_retries", 0) + int(self._manage("shell", "-c", (
            "from django.contrib.auth.models import User\n"
            "from hl7gateway.models import OutboundMessage\n"
            "from hl7gateway.outbox.actions import retry\n"
            "user = User.objects.get(username='drill_rad')\n"
            "ids = list(OutboundMessage.objects.filter(status='FAILED').order_by('id').values_list('id', flat=True))\n"
            "[retry(i, user, 'destination fixed after the drill') for i in ids]\n"
            "print(len(ids))\n")).strip().splitlines()[-1])

    def _drain(self, studies: set[str]) -> bool:
        deadline = time.monotonic() + self.config.drain_timeout
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.database_url, autocommit=True, connect_timeout=10) as db:
                    failed = db.execute("SELECT count(*) FROM hl7gateway_outboundmessage "
                                        "WHERE status = 'FAILED'").fetchone()[0]
                if failed and "billing-ar" in self.config.outages:
                    self._operator_retries_failed()
                    continue
                with psycopg.connect(self.database_url, autocommit=True, connect_timeout=10) as db:
                    oru_open = db.execute("SELECT count(*) FROM hl7gateway_outboundmessage "
                                          "WHERE status <> 'DELIVERED'").fetchone()[0]
                    stored = dict(db.execute("SELECT study_instance_uid, status FROM pacs_study").fetchall())
                # Settled: every ORU row written by a signature delivered, every study the modality
                # sent that the engine holds archived.  What the engine does not hold at all cannot
                # arrive by waiting: the tally counts it.
                if not oru_open and all(stored[uid] == "ARCHIVED" for uid in studies if uid in stored):
                    return True
            except psycopg.OperationalError:
                pass
            time.sleep(1.0)
        return False


def _interrupted(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run(config: DrillConfig) -> DrillResult:
    return Drill(config).run()


def results_section(result: DrillResult, title: str, command: str) -> str:
    """A section of bench/RESULTS.md: the command, seed, faults and the table."""
    config = result.config
    kills = ", ".join(f"{kind} {n}" for kind, n in result.kills.items() if n) or "none"
    lines = [
        f"### {title}", "",
        f"Command: `{command}`", "",
        f"Seed {config.seed}; kill -9: {kills}; outages: {', '.join(config.outages) or 'none'}"
        + (f" ({config.outage_seconds:g} s each where held)" if config.outages else "") + "; "
        f"traffic {result.traffic_seconds:.0f} s, wall {result.wall_seconds:.0f} s "
        f"({result.tally.figures.get('hl7_sends')} MLLP sends, {result.tally.figures.get('storescu_runs')} storescu runs, "
        f"{result.tally.figures.get('sign_requests')} sign requests, "
        f"{result.tally.figures.get('operator_retries', 0)} operator retries of rejected ORUs).", "",
        result.table(), "",
    ]
    held = [f"{what.split(':')[0]} at {at:g} s" for at, what in result.faults if what.endswith("begins")]
    if held:
        lines[-2:-2] = ["Outages (seconds after the traffic began): " + ", ".join(held) + ".", ""]
    if result.skipped:
        lines += ["Skipped or substituted: " + "; ".join(result.skipped), ""]
    if result.errors:
        lines += ["Errors: " + "; ".join(e.splitlines()[0] for e in result.errors[:10]), ""]
    details = {k: v for k, v in result.tally.details.items() if v}
    if details:
        lines += ["Findings:", "", "```", json.dumps(details, indent=1)[:4000], "```", ""]
    return "\n".join(lines)


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
