"""Exam complete to archived: from the MPPS N-SET COMPLETED to the VNA holding every instance.

The engine's processes as production runs them (``manage.py run_dicom --workers 2``, a
``celery -A project worker --concurrency 2`` and ``celery -A project beat``, on PostgreSQL and
Redis), Orthanc (``SyncStorageArea: true``, the engine's AE in its ``DicomModalities`` for
the storage commitment N-EVENT-REPORT) as the VNA.  Per run, a 200-image CT study (512 x 512,
16-bit, ~105 MB, synthetic) for a new order:

* engine: the study is stored into ``run_dicom`` with dcmtk's ``/usr/bin/storescu`` (not
  timed), then pynetdicom sends the MPPS N-CREATE and the N-SET COMPLETED listing every
  instance.  The clock starts when the N-SET response arrives and stops when Orthanc's REST
  API (``/statistics``, polled every ``--poll`` seconds) counts every instance; a second figure
  stops when the storage commitment report is recorded (the transfer COMMITTED);
* direct: ``/usr/bin/storescu`` sends the same 200 files straight to the same Orthanc
  (emptied before each leg); the clock starts when storescu is started and stops the same way.

One warm-up run (``--warmup``, both legs, not counted) comes first: the first association
Orthanc accepts after starting, and each worker child's first task, are slower and would fall
on whichever leg comes first.  The two legs alternate order from run to run; medians and the
ratio direct / engine (target: at least 0.8).  The engine leg's breakdown comes from the rows
it wrote (status changes, transfer and item timestamps), the worker's log ("Task ...
received") and Orthanc's storage commitment job (``/jobs``), relative to the N-SET response;
the load average is recorded before and after each run.

    createdb -h 127.0.0.1 -U postgres pacs_bench_archive
    DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/pacs_bench_archive \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/13 \\
        .venv/bin/python bench/archive_latency.py --images 200 --runs 5

The database is created if missing and its image tables EMPTIED, the Redis database named by
CELERY_BROKER_URL is FLUSHED: never point them at real ones.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/pacs_bench_archive")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/13")
os.environ["VNA_DESTINATIONS"] = ""

import store  # noqa: E402 - bench/store.py: database, engine process, study, storescu helpers

from bench.common import Beat, mpps  # noqa: E402
from tests.support.celery_worker import CeleryWorker  # noqa: E402
from tests.support.orthanc import OrthancProcess  # noqa: E402

# Production's process options (Procfile).
RUN_DICOM_ARGS = ("--workers", "2")
WORKER_ARGS = ["--concurrency", "2"]
_RECEIVED = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] Task pacs\.send_transfer\[")


class Vna:
    """The Orthanc under test, polled through one kept-alive HTTP session."""

    def __init__(self, orthanc: OrthancProcess):
        import requests

        self.orthanc = orthanc
        self.http = requests.Session()

    def count(self) -> int:
        return int(self.http.get(f"{self.orthanc.url}/statistics", timeout=10).json()["CountInstances"])

    def wait_count(self, n: int, poll: float, timeout: float = 600.0) -> float:
        """time.time() of the first poll that sees ``n`` instances."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count() >= n:
                return time.time()
            time.sleep(poll)
        raise RuntimeError(f"Orthanc did not reach {n} instances")

    def commitment_job(self, since: float, timeout: float = 10.0) -> dict:
        """Orthanc's storage commitment SCP job created after ``since``: when it was created (the
        N-ACTION received) and completed (after the N-EVENT-REPORT), as time.time()."""

        def utc(text):  # Orthanc writes ISO basic format, UTC: 20261203T105300.123456
            return dt.datetime.strptime(text, "%Y%m%dT%H%M%S.%f").replace(tzinfo=dt.UTC).timestamp()

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = [j for j in self.http.get(f"{self.orthanc.url}/jobs?expand", timeout=10).json()
                    if j.get("Type") == "StorageCommitmentScp" and utc(j["CreationTime"]) >= since]
            job = max(jobs, key=lambda j: j["CreationTime"]) if jobs else {}
            if job.get("CompletionTime"):
                return {"orthanc_commitment_job_created": utc(job["CreationTime"]),
                        "orthanc_commitment_job_completed": utc(job["CompletionTime"])}
            time.sleep(0.05)
        return {}

    def empty(self) -> None:
        for study in self.http.get(f"{self.orthanc.url}/studies", timeout=10).json():
            self.http.delete(f"{self.orthanc.url}/studies/{study}", timeout=60).raise_for_status()
        if self.count():
            raise RuntimeError("Orthanc not emptied")


def load() -> float:
    return round(os.getloadavg()[0], 2)


def engine_leg(engine, vna: Vna, rp, files, images: int, poll: float) -> dict:
    from pacs.models import Transfer
    from pacs.models import transfers as tr

    sent, t0 = mpps(engine.port, rp, files)
    held = vna.wait_count(images, poll)
    deadline = time.monotonic() + 300
    while True:
        transfer = Transfer.objects.filter(study__study_instance_uid=rp.study_instance_uid).first()
        if transfer is not None and transfer.status in tr.FINAL:
            break
        if time.monotonic() > deadline:
            raise RuntimeError("transfer not committed")
        time.sleep(poll)
    committed = time.time()
    if transfer.status != tr.COMMITTED:
        raise RuntimeError(f"transfer {transfer.status}: {transfer.reason}")
    return {**vna.commitment_job(since=sent), "n_set_sent": sent, "n_set_answered": t0, "held": held, "committed_seen": committed,
            "transfer_id": transfer.pk, "seconds": held - t0, "seconds_committed": committed - t0}


def direct_leg(orthanc: OrthancProcess, vna: Vna, files, images: int, poll: float) -> dict:
    t0 = time.time()
    result: dict = {}

    def run():
        result["storescu_seconds"] = store.storescu(orthanc.dicom_port, orthanc.aet, files)

    thread = threading.Thread(target=run)
    thread.start()
    held = vna.wait_count(images, poll)
    thread.join()
    return {"seconds": held - t0, **result}


def breakdown(leg: dict, worker_log: str) -> dict:
    """Milestones of the engine leg in seconds after the N-SET response (negative: before it)."""
    from django.db.models import Max, Min

    from pacs.models import Transfer, TransferItem
    from ris.models import StatusChange

    t0 = leg["n_set_answered"]
    transfer = Transfer.objects.select_related("study").get(pk=leg["transfer_id"])
    study = transfer.study

    def at(entity, object_id, to_status):
        change = StatusChange.objects.filter(entity=entity, object_id=object_id, to_status=to_status).first()
        return change.at.timestamp() if change else None

    sent = TransferItem.objects.filter(transfer=transfer).aggregate(first=Min("sent_at"), last=Max("sent_at"))
    received = [m.group(1) for m in map(_RECEIVED.match, worker_log.splitlines()) if m and "received" in m.string]
    # the worker logs in local time with milliseconds; the last "received" line is this leg's task
    task_received = (dt.datetime.strptime(received[-1], "%Y-%m-%d %H:%M:%S,%f").timestamp() if received else None)
    points = {
        "n_set_sent": leg["n_set_sent"],
        "study_complete": at("study", study.pk, "COMPLETE"),
        "transfer_row_created": transfer.created_at.timestamp(),
        "task_received_by_worker": task_received,
        "transfer_claimed": at("transfer", transfer.pk, "IN_PROGRESS"),
        "first_items_recorded_sent": sent["first"].timestamp(),
        "last_items_recorded_sent": sent["last"].timestamp(),
        "commitment_requested": transfer.commitment_requested_at.timestamp(),
        "orthanc_holds_every_instance": leg["held"],
        "orthanc_commitment_job_created": leg.get("orthanc_commitment_job_created"),
        "orthanc_commitment_job_completed": leg.get("orthanc_commitment_job_completed"),
        "commitment_recorded": transfer.finished_at.timestamp(),
        "study_archived": study.archived_at.timestamp() if study.archived_at else None,
    }
    return {k: (round(v - t0, 3) if v is not None else None) for k, v in points.items()}


def bench(workdir: Path, images: int, runs: int, poll: float, warmup: int) -> dict:
    import redis

    from pacs.models import VnaDestination

    redis.Redis.from_url(os.environ["CELERY_BROKER_URL"]).flushdb()
    started = []  # stopped in reverse order, whatever happens
    rows = []
    try:
        engine = store.Engine(workdir, RUN_DICOM_ARGS)
        started.append(engine)
        orthanc = OrthancProcess(workdir / "orthanc", sync_storage=True, engine_port=engine.port)
        started.append(orthanc)
        orthanc.start()
        vna = Vna(orthanc)
        VnaDestination.objects.all().delete()
        VnaDestination.objects.create(name="bench-orthanc", ae_title=orthanc.aet, host="127.0.0.1",
                                      port=orthanc.dicom_port)
        worker = CeleryWorker(workdir, {**engine.env, "LOG_LEVEL": "INFO"}, name="archive", args=WORKER_ARGS)
        started.append(worker)
        worker.start()
        started.append(Beat(workdir, engine.env))
        for run in range(-warmup, runs):  # negative: warm-up runs, not counted
            load_before = load()
            folder = workdir / f"study{run}"
            rp, files, size = store.ordered_study(folder, images)
            store.storescu(engine.port, "PACS", files)
            os.sync()  # neither leg shares the disk with the writeback of the study just written
            legs = {}
            order = ("engine", "direct") if run % 2 == 0 else ("direct", "engine")
            for name in order:
                vna.empty()
                os.sync()
                if name == "engine":
                    legs[name] = engine_leg(engine, vna, rp, files, images, poll)
                else:
                    legs[name] = direct_leg(orthanc, vna, files, images, poll)
            vna.empty()
            shutil.rmtree(folder)
            row = {"run": run, "first": order[0], "MB": round(size / 1e6, 1),
                   "engine_seconds": round(legs["engine"]["seconds"], 3),
                   "engine_committed_seconds": round(legs["engine"]["seconds_committed"], 3),
                   "direct_seconds": round(legs["direct"]["seconds"], 3),
                   "direct_storescu_seconds": round(legs["direct"]["storescu_seconds"], 3),
                   "breakdown": breakdown(legs["engine"], worker.log()),
                   "load_before": load_before, "load_after": load()}
            row["ratio"] = round(row["direct_seconds"] / row["engine_seconds"], 2)
            if run >= 0:
                rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        for process in reversed(started):
            process.stop()

    def med(key):
        return round(statistics.median(r[key] for r in rows), 3)

    out = {"images": images, "runs": rows, "median_engine_seconds": med("engine_seconds"),
           "median_engine_committed_seconds": med("engine_committed_seconds"),
           "median_direct_seconds": med("direct_seconds"), "median_ratio_per_run": med("ratio")}
    out["ratio_of_medians"] = round(out["median_direct_seconds"] / out["median_engine_seconds"], 2)
    out["ratio_committed_of_medians"] = round(out["median_direct_seconds"] / out["median_engine_committed_seconds"], 2)
    out["median_breakdown"] = {k: statistics.median(r["breakdown"][k] for r in rows)
                               for k in rows[0]["breakdown"] if all(r["breakdown"][k] is not None for r in rows)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1,
                        help="runs first, not counted (every process and Orthanc past its first association)")
    parser.add_argument("--poll", type=float, default=0.005, help="seconds between polls of Orthanc and the database")
    parser.add_argument("--json", help="append the results as one JSON line to this file")
    args = parser.parse_args()
    store.ensure_database()
    import django

    django.setup()
    store.reset_tables()
    with tempfile.TemporaryDirectory(prefix="bench-archive-") as tmp:
        result = bench(Path(tmp), args.images, args.runs, args.poll, args.warmup)
    store.reset_tables()
    print(f"Exam complete to archived, {args.images} CT images, {args.runs} runs (alternating order):")
    print(f"  engine (N-SET response -> Orthanc holds all)  median {result['median_engine_seconds']} s")
    print(f"  engine (N-SET response -> commitment recorded) median {result['median_engine_committed_seconds']} s")
    print(f"  direct (storescu start -> Orthanc holds all)   median {result['median_direct_seconds']} s")
    print(f"  direct / engine = {result['ratio_of_medians']} (medians), per-run median {result['median_ratio_per_run']};"
          f" to commitment {result['ratio_committed_of_medians']}")
    print("  engine breakdown, median seconds after the N-SET response:")
    for k, v in result["median_breakdown"].items():
        print(f"    {k:32s} {v:8.3f}")
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
