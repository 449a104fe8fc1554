"""What production runs, tested: the runtime requirements alone, the processes exactly as
docker/compose.yaml and the Procfile (``make run``) start them, on PostgreSQL and Redis with
DEBUG off and a set SECRET_KEY, and on the embedded default (SQLite, filesystem broker).

Each set-up lives through one patient's day (tests/production/department.py): order over
MLLP, Modality Worklist, images and MPPS, the study archived in a real Orthanc by the worker,
a signed report delivered as ORU^R01 to an MLLP sink, and every process's health check.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis

from tests.production import deployment, runtime_venv
from tests.production.department import PATIENT_VALUES, Engine, a_day, health, wait_port
from tests.support.mllp_sink import MLLPSink
from tests.support.net import free_port
from tests.support.orthanc import OrthancProcess

ROOT = Path(__file__).resolve().parents[2]
SECRET_KEY = "smoke-test-secret-key-0c8e4b1d9a7f62e35b0d4c1a8f7e6d5c4b3a2918"
# Variables the image sets for Python or dcmtk, not for the engine's settings.
NOT_ENGINE_SETTINGS = {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "TCP_NODELAY"}

pytestmark = [pytest.mark.socket, pytest.mark.slow]


@pytest.fixture(scope="module")
def runtime() -> Path:
    return runtime_venv.ensure()


# --- the runtime environment -----------------------------------------------------------------

def test_runtime_requirements_import_every_module_and_transport(runtime, tmp_path):
    """Every module of the engine, and each library module loaded only at run time (the Redis and
    filesystem transports, the beat scheduler, gunicorn's worker, both database backends),
    imports with requirements.txt alone; the development requirements are not there."""
    env = runtime_venv.clean_env(
        VAR_DIR=str(tmp_path / "var"), DATABASE_URL=os.environ["DATABASE_URL"],
        CELERY_BROKER_URL=os.environ["CELERY_BROKER_URL"], SECRET_KEY="import-everything-test-key")
    result = subprocess.run([str(runtime / "bin" / "python"), "tests/production/import_everything.py"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"imported (\d+) of \1 modules", result.stdout), result.stdout
    for dev_only in ("pytest", "yaml", "playwright", "ruff"):
        probe = subprocess.run([str(runtime / "bin" / "python"), "-c", f"import {dev_only}"], env=env,
                               capture_output=True, timeout=60)
        assert probe.returncode != 0, f"{dev_only} is importable in the runtime environment"


# --- the deployment files ------------------------------------------------------------------

def test_dockerfile_installs_the_runtime_requirements_and_starts_the_web():
    image = deployment.dockerfile()
    # The build stage makes wheels of requirements.txt (python-ldap compiles there); the image
    # installs exactly those, from nothing else (--no-index).
    wheels = [r for r in image.run if "pip wheel" in r]
    assert wheels == ["pip wheel --no-cache-dir -w /wheels -r /build/requirements.txt"], wheels
    installs = [r for r in image.run if "pip install" in r]
    assert installs == ["pip install --no-cache-dir --no-index --find-links /wheels -r requirements.txt"
                        " && rm -rf /wheels"], installs
    assert not any("requirements-dev" in r for r in image.run)
    assert image.cmd == deployment.compose()["web"].command, "the image's default process is the web service"
    assert sorted(image.expose) == [2575, 2762, 8000, 11112]
    unknown = set(image.env) - deployment.documented_settings() - NOT_ENGINE_SETTINGS
    assert not unknown, f"the Dockerfile sets variables the engine does not read: {unknown}"
    assert image.workdir == "/app"


def test_compose_runs_every_process_type_with_settings_that_exist():
    services = deployment.compose()
    engine = {name: s for name, s in services.items() if s.uses_engine_image}
    assert set(engine) == {"migrate", *deployment.PROCESS_TYPES}
    documented = deployment.documented_settings()
    procfile = deployment.procfile()
    assert set(procfile) == set(deployment.PROCESS_TYPES)
    for name in deployment.PROCESS_TYPES:
        service = engine[name]
        unknown = set(service.environment) - documented
        assert not unknown, f"compose service {name} sets variables the engine does not read: {unknown}"
        # The same program and subcommand as the Procfile's line (options may differ: worker counts).
        assert service.command[:4] == procfile[name].split()[:4], (name, service.command, procfile[name])
        assert service.healthcheck == ["python", "manage.py", "health", name], (name, service.healthcheck)


def test_compose_takes_every_password_from_the_environment():
    """No credential is written in docker/compose.yaml: each is a ``${VAR:?message}``
    interpolation, so compose refuses to start until the operator sets it."""
    interpolation = re.compile(r"\$\{[A-Z_]+:\?[^}]*\}")
    credentials = []
    for service in deployment.compose().values():
        for name, value in service.environment.items():
            if "PASSWORD" in name:
                credentials.append((service.name, name, value))
            in_url = re.search(r"://[^:/@]+:(.+)@[^@]+$", value)
            if in_url:
                credentials.append((service.name, name, in_url.group(1)))
    assert len(credentials) >= 2, "the database password, for postgres and in DATABASE_URL"
    for service, name, value in credentials:
        assert interpolation.fullmatch(value), f"{service}: {name} has a credential written in: {value!r}"


# --- one day of the department on each set-up ---------------------------------------------------

class Processes:
    """Processes started in their own session, their output in files, stopped as a group."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "wb")
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.started.append((name, process))
        return process

    def output(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def tail(self) -> str:
        parts = []
        for name, process in self.started:
            state = "running" if process.poll() is None else f"exited {process.returncode}"
            parts.append(f"--- {name} ({state})\n{self.output(name)[-2500:]}")
        return "\n".join(parts)

    def assert_running(self) -> None:
        dead = [(n, p.returncode) for n, p in self.started if p.poll() is not None]
        assert not dead, f"processes exited: {dead}\n{self.tail()}"

    def stop(self) -> None:
        for _, process in self.started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for _, process in self.started:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _with_path(url: str, path: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


@pytest.fixture
def postgres_and_redis():
    """A database of its own (created empty, dropped after) and a Redis database of its own
    (emptied), on the servers the test suite uses."""
    server = os.environ["DATABASE_URL"]
    name = f"pacs_smoke_{os.getpid()}"
    admin = psycopg.connect(_with_path(server, "/postgres"), autocommit=True)
    admin.execute(f"DROP DATABASE IF EXISTS {name}")
    admin.execute(f"CREATE DATABASE {name}")
    broker = os.environ["CELERY_BROKER_URL"]
    number = (int(urlsplit(broker).path.strip("/") or 0) + 8) % 16
    broker = _with_path(broker, f"/{number}")
    redis.Redis.from_url(broker).flushdb()
    try:
        yield _with_path(server, f"/{name}"), broker
    finally:
        redis.Redis.from_url(broker).flushdb()
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


@pytest.fixture
def peers(tmp_path):
    """The hospital outside the engine: a real Orthanc as the VNA and an MLLP sink as the EHR."""
    dicom_port = free_port()
    orthanc = OrthancProcess(tmp_path / "orthanc", engine_aet="PACS", engine_port=dicom_port).start()
    sink = MLLPSink().start()
    try:
        yield orthanc, sink, dicom_port
    finally:
        sink.down()
        orthanc.stop()


def _site_settings(tmp_path: Path, orthanc: OrthancProcess, sink: MLLPSink, dicom_port: int) -> dict[str, str]:
    """What a site configures: its ports, its VNA and its report destination."""
    return {
        "WEB_PORT": str(free_port()), "HL7_MLLP_PORT": str(free_port()), "DICOM_PORT": str(dicom_port),
        "VNA_DESTINATIONS": f"dicom://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
        "HL7_ORU_DESTINATIONS": f"ehr={sink.url}",
        "VAR_DIR": str(tmp_path / "var"),
    }


def _engine(python: Path, env: dict[str, str]) -> Engine:
    return Engine(python=python, env=env, web=int(env["WEB_PORT"]), mllp=int(env["HL7_MLLP_PORT"]),
                  dicom=int(env["DICOM_PORT"]))


def _web_serves_pages_and_static_files(engine: Engine) -> None:
    """DEBUG off: pages need a login, static files come from collectstatic through whitenoise."""
    opener = urllib.request.build_opener(type("NoRedirect", (urllib.request.HTTPRedirectHandler,),
                                              {"redirect_request": lambda *a, **k: None})())
    try:
        # A search in the query string, as a browser sends it: it must reach no log line.
        opener.open(f"http://127.0.0.1:{engine.web}/?q={PATIENT_VALUES[0]}", timeout=30)
        raise AssertionError("the reading worklist answered without a login")
    except urllib.error.HTTPError as exc:
        assert exc.code == 302 and "/accounts/login/" in exc.headers["Location"]
    with urllib.request.urlopen(f"http://127.0.0.1:{engine.web}/static/admin/css/base.css", timeout=30) as r:
        assert r.status == 200 and b"body" in r.read()


def _live_through_a_day(engine: Engine, processes: Processes, orthanc, sink, tmp_path: Path,
                        health_commands: dict[str, list[str]], start_seconds: float) -> None:
    """The listeners up within ``start_seconds``; a day (tests/production/department.py); pages and
    static files; every health check healthy; every process still running, none logged a traceback."""
    deadline = time.monotonic() + start_seconds
    for port in (engine.web, engine.mllp, engine.dicom):
        wait_port(port, deadline, processes)
    a_day(engine, orthanc, sink, tmp_path / "day", processes)
    _web_serves_pages_and_static_files(engine)
    answers = health(engine, health_commands)
    assert all(a["status"] == "ok" for a in answers.values()), answers
    processes.assert_running()
    for name, _ in processes.started:
        output = processes.output(name)
        assert "Traceback" not in output, f"{name} logged a traceback:\n{output[-4000:]}"
        # No patient data in any process's log, at the production log level: the day's patient
        # (name, ID, birth date) and accession number, through every process that handled them.
        found = [value for value in PATIENT_VALUES if value.lower() in output.lower()]
        assert not found, f"{name} logged patient data {found}"


def test_compose_services_on_postgres_and_redis(runtime, tmp_path, postgres_and_redis, peers):
    """The image's environment and build step, then docker/compose.yaml's migrate, web, mllp, dicom,
    worker and beat commands exactly as written, on PostgreSQL and Redis; a day; every service's
    healthcheck command."""
    database_url, broker_url = postgres_and_redis
    orthanc, sink, dicom_port = peers
    image = deployment.dockerfile()
    services = deployment.compose()
    env = runtime_venv.clean_env(**image.env)
    env["PATH"] = f"{runtime / 'bin'}:{env['PATH']}"
    env.update(services["web"].environment)
    # The containers' paths and host names, as this machine has them.
    env.update(_site_settings(tmp_path, orthanc, sink, dicom_port))
    env.update(STATIC_ROOT=str(tmp_path / "static"), STORAGE_DIR=str(tmp_path / "var" / "storage"),
               DATABASE_URL=database_url, CELERY_BROKER_URL=broker_url, SECRET_KEY=SECRET_KEY, DEBUG="false")

    (build_step,) = [r for r in image.run if "manage.py" in r]
    built = subprocess.run(["bash", "-c", build_step], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    assert (tmp_path / "static" / "admin" / "css" / "base.css").exists()
    migrated = subprocess.run(services["migrate"].command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
    assert migrated.returncode == 0, migrated.stderr[-3000:]

    processes = Processes(tmp_path / "logs")
    try:
        for name in deployment.PROCESS_TYPES:
            processes.start(name, services[name].command, env)
        _live_through_a_day(_engine(runtime / "bin" / "python", env), processes, orthanc, sink, tmp_path,
                            {name: services[name].healthcheck for name in deployment.PROCESS_TYPES}, 120)
    finally:
        processes.stop()


def _make_run(runtime: Path, tmp_path: Path, settings: dict[str, str], peers, label: str) -> None:
    """``make run`` (venv, migrate, collectstatic, check, honcho with the Procfile) with the given
    settings; a day; each process type's ``manage.py health``."""
    orthanc, sink, dicom_port = peers
    env = runtime_venv.clean_env(**_site_settings(tmp_path, orthanc, sink, dicom_port), **settings)
    processes = Processes(tmp_path / "logs")
    try:
        processes.start(label, ["make", "run", f"VENV={runtime}"], env)
        python = str(runtime / "bin" / "python")
        _live_through_a_day(_engine(runtime / "bin" / "python", env), processes, orthanc, sink, tmp_path,
                            {p: [python, "manage.py", "health", p] for p in deployment.PROCESS_TYPES}, 240)
        for process_type in deployment.PROCESS_TYPES:
            assert re.search(rf"^\S+ {process_type}\.1\s+\| ", processes.output(label), re.M), \
                f"honcho did not start the Procfile's {process_type}"
    finally:
        processes.stop()


def test_make_run_on_postgres_and_redis(runtime, tmp_path, postgres_and_redis, peers):
    """The README's production start: ``make run`` with DATABASE_URL, CELERY_BROKER_URL, SECRET_KEY."""
    database_url, broker_url = postgres_and_redis
    _make_run(runtime, tmp_path, {"DATABASE_URL": database_url, "CELERY_BROKER_URL": broker_url,
                                  "SECRET_KEY": SECRET_KEY, "DEBUG": "false"}, peers, "make-run")


def test_make_run_on_the_embedded_default(runtime, tmp_path, peers):
    """The README's quick start: ``make run`` with nothing set (SQLite and the filesystem broker
    under VAR_DIR, nothing written into the checkout)."""
    _make_run(runtime, tmp_path, {}, peers, "make-run")
    assert (tmp_path / "var" / "pacs.sqlite3").exists()
    assert list((tmp_path / "var" / "broker" / "control").iterdir()), "the filesystem broker lives under VAR_DIR"
    assert not (ROOT / "control").exists(), "nothing of the broker is written into the checkout"
