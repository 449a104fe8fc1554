"""Helpers shared by the benchmark scripts: ports, the engine's web process with an API token,
``celery beat``, an MPPS exchange, synthetic CT studies, percentiles.

Importable as ``bench.common`` (the repository root on ``sys.path``).  The engine's DICOM
process, the database and the image tables are ``bench/store.py``'s.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def pct(values: list[float], p: float) -> float:
    """The ``p`` quantile (0..1, nearest rank below) of seconds, in milliseconds."""
    values = sorted(values)
    return round(values[min(len(values) - 1, int(p * len(values)))] * 1000, 2)


def manage(env: dict, *args: str) -> str:
    """``manage.py <args>`` with ``env``; its standard output."""
    result = subprocess.run(
        [str(ROOT / ".venv/bin/python"), "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode:
        raise RuntimeError(f"manage.py {args[0]}: {result.stderr[-2000:]}")
    return result.stdout


def stop(process: subprocess.Popen, timeout: float = 20.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and of its live descendants (Linux /proc:
    fields 14 and 15 of ``stat``, in clock ticks; ``task/*/children`` for the tree)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


class Web:
    """``gunicorn project.wsgi`` (the Procfile's web process; ``WEB_WORKERS`` from ``env``, 2 by
    default) on an ephemeral port, and an API token of a technologist for DICOMweb."""

    def __init__(self, env: dict, log: Path):
        self.port = free_port()
        self.env = {**env, "WEB_PORT": str(self.port), "DICOMWEB_BASE_URL": f"http://127.0.0.1:{self.port}/dicomweb"}
        self.log = open(log, "wb")
        self.process = subprocess.Popen(
            [str(ROOT / ".venv/bin/gunicorn"), "project.wsgi"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port)

    @property
    def dicomweb(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicomweb"

    def api_token(self, username: str) -> str:
        """A new user ``username`` with the technologist role, and an API token key for it."""
        manage(
            self.env,
            "shell",
            "-c",
            "from django.contrib.auth.models import Group, User\n"
            "from project.access import TECHNOLOGIST\n"
            f"u, _ = User.objects.get_or_create(username={username!r})\n"
            "u.groups.add(Group.objects.get(name=TECHNOLOGIST))\n",
        )
        return manage(self.env, "create_api_token", username, "--name", "benchmark").strip().splitlines()[-1]

    def stop(self) -> None:
        stop(self.process, 30)
        self.log.close()


class Beat:
    """``celery -A project beat`` with its schedule file in the work directory."""

    def __init__(self, workdir: Path, env: dict):
        self.log = open(workdir / "beat.log", "wb")
        self.process = subprocess.Popen(
            [
                str(ROOT / ".venv/bin/celery"),
                "-A",
                "project",
                "beat",
                "--loglevel",
                "INFO",
                "-s",
                str(workdir / "celerybeat-schedule"),
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self):
        stop(self.process)
        self.log.close()


def mpps(
    port: int,
    rp,
    files: list[Path],
    *,
    patient_name: str = "BENCH^CT",
    patient_id: str = "BENCH",
    calling: str = "CT1",
    called: str = "PACS",
) -> tuple[float, float]:
    """MPPS N-CREATE IN PROGRESS, then N-SET COMPLETED listing every file (PS3.4 F.7.2, IHE RAD-6,
    RAD-7) for the requested procedure ``rp``; returns the N-SET's (request sent, response
    received) as time.time()."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityPerformedProcedureStep

    from tests.support.mpps import n_create_for, n_set_for

    step = rp.steps.get()
    headers = [dcmread(f, stop_before_pixels=True) for f in files]
    today = dt.date.today().strftime("%Y%m%d")
    create = n_create_for(
        study_instance_uid=rp.study_instance_uid,
        accession_number=rp.accession_number,
        requested_procedure_id=rp.requested_procedure_id,
        scheduled_procedure_step_id=step.scheduled_procedure_step_id,
        patient_name=patient_name,
        patient_id=patient_id,
        start_date=today,
        start_time="080000",
    )
    done = n_set_for(
        [(h.SOPClassUID, h.SOPInstanceUID) for h in headers],
        series_instance_uid=headers[0].SeriesInstanceUID,
        end_date=today,
        end_time="081500",
    )
    ae = AE(ae_title=calling)
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise RuntimeError("no MPPS association with the engine")
    try:
        uid = generate_uid()
        status, _ = assoc.send_n_create(create, ModalityPerformedProcedureStep, uid)
        if status.Status != 0:
            raise RuntimeError(f"N-CREATE status 0x{status.Status:04X}")
        sent = time.time()
        status, _ = assoc.send_n_set(done, ModalityPerformedProcedureStep, uid)
        answered = time.time()
        if status.Status != 0:
            raise RuntimeError(f"N-SET status 0x{status.Status:04X}")
    finally:
        assoc.release()
    return sent, answered


def ct_pixels(rows: int, columns: int, slice_index: int):
    """CT-like stored values (uint16, BitsStored 12, RescaleIntercept -1024): air around an
    elliptic body of soft tissue with a bone ring and noise, changing slowly from slice to slice
    (so that a rendered JPEG is the size of a real one, not of random bytes)."""
    import numpy as np

    rng = np.random.default_rng(slice_index)
    y, x = np.mgrid[0:rows, 0:columns]
    cy, cx = rows / 2, columns / 2
    a = columns * (0.38 + 0.03 * np.sin(slice_index / 15))
    b = rows * 0.30
    r = ((x - cx) / a) ** 2 + ((y - cy) / b) ** 2
    hu = np.full((rows, columns), -1000.0)
    hu[r <= 1.0] = 40.0
    hu[(r > 0.85) & (r <= 0.93)] = 700.0
    organ = ((x - cx * 0.8) / (a * 0.3)) ** 2 + ((y - cy) / (b * 0.4)) ** 2 <= 1.0
    hu[organ] = 60.0
    hu += rng.normal(0.0, 12.0, size=hu.shape)
    return np.clip(hu + 1024.0, 0, 4095).astype(np.uint16)


def write_ct_study(directory: Path, count: int, *, rows: int = 512, columns: int = 512, **kwargs) -> list[Path]:
    """``count`` CT images of one series (``tests.support.orthanc.make_instance``'s attributes and
    identifiers) with CT-like 16-bit pixels, rescale and a soft-tissue window, written as files."""
    from pydicom.uid import generate_uid

    from tests.support.orthanc import make_instance

    directory.mkdir(parents=True, exist_ok=True)
    series = kwargs.pop("series_instance_uid", None) or generate_uid()
    paths = []
    for n in range(1, count + 1):
        ds = make_instance(series_instance_uid=series, instance_number=n, rows=1, columns=1, **kwargs)
        ds.Rows, ds.Columns = rows, columns
        ds.BitsStored, ds.HighBit = 12, 11
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.SliceThickness = 1.0
        ds.ImagePositionPatient = [0.0, 0.0, float(n)]
        ds.PixelData = ct_pixels(rows, columns, n).tobytes()
        path = directory / f"{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
