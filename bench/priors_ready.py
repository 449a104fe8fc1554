"""Relevant priors ready before the exam is complete (IHE SWF prefetch), at a steady order rate.

The engine's processes as production runs them (``manage.py run_mllp --workers 2``,
``manage.py run_dicom --workers 2``, ``celery -A project worker --concurrency 2``, ``celery -A
project beat``; PostgreSQL, Redis) and Orthanc 1.10.1 as the VNA (a ``VnaDestination``): by
default a DICOM one (the engine's AE in its ``DicomModalities`` for the C-MOVE and the storage
commitment report); with ``--vna dicomweb`` a STOW-RS one, asked by QIDO-RS and fetched from by
WADO-RS (its DICOMweb plug-in).

Before the clock starts, Orthanc is loaded (dcmtk ``storescu``) with each order's patient's
earlier studies, all synthetic: ``--priors`` CT studies of ``--prior-images`` CT images each
(512 x 512, 16-bit, about 0.5 MB an image), one and two (three, ...) years old, which the
engine's rule (``PRIORS_MATCH=modality``, ``PRIORS_MAX_YEARS`` 5, ``PRIORS_MAX_COUNT`` 3) must
choose, and one small MR study it must not.  The engine holds none of them.

Then, at ``--rate`` orders an hour (evenly spaced), ``--orders`` new CT orders (HL7 ORM^O01 NW,
one MLLP connection each, a new patient each) go to the MLLP listener; ``--exam-minutes`` after
each order's ACK its exam is completed as a modality does it: ``--exam-images`` images stored
(storescu, with the order's accession number and Study Instance UID), then MPPS N-CREATE and
N-SET COMPLETED listing them (the engine's exam complete: ``pacs.services.completion``).

An order's priors are READY before its exam is complete when every prior it should have is
recorded (``pacs.models.Prior``) and READY, the last one's ``finished_at`` before the N-SET
was sent.  Reported: that share (target: at least 95 % at 100 orders an hour), and the
distribution of order ACK -> all priors READY (so that any other interval can be judged), with
order ACK -> priors chosen (the C-FIND step) beside it.

The default is the real rate for ten minutes (17 orders at 100 an hour, exams 5 minutes after
their order: about 15 minutes).  ``--rate`` higher (and ``--exam-minutes`` lower) compresses
time: the fetches are not compressed, so a compressed run is harsher than the real rate.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/pacs_h3b CELERY_BROKER_URL=redis://127.0.0.1:6379/3 \\
        .venv/bin/python bench/priors_ready.py --rate 100 --orders 17 --exam-minutes 5

The database is created if missing and its image tables EMPTIED, the Redis database named by
CELERY_BROKER_URL is FLUSHED: never point them at real ones.  Results: a table on stdout, one
JSON line appended to bench/out/priors_ready.jsonl.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/pacs_h3b")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/3")
# With DATABASE_URL set the engine needs a SECRET_KEY (check pacs.E008); this one is for benchmarks only.
os.environ.setdefault("SECRET_KEY", "bench-only-not-a-production-key-0c4f8e2a9b7d1e6f3a5c")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ["VNA_DESTINATIONS"] = ""
os.environ["PRIORS_ENABLED"] = "true"
os.environ["PRIORS_MATCH"] = "modality"

import store  # noqa: E402 - bench/store.py: database, engine process, storescu

from bench.common import Beat, free_port, mpps, pct, stop, wait_port, write_ct_study  # noqa: E402
from tests.support.celery_worker import CeleryWorker  # noqa: E402
from tests.support.orthanc import OrthancProcess, write_study  # noqa: E402

ISSUER = "HOSP"
ORDER = (
    "MSH|^~\\&|BENCH_EHR|BENCH_HOSP|PACS|RADIOLOGY|{now}||ORM^O01|{cid}|P|2.3.1\r"
    "PID|1||{pid}^^^" + ISSUER + "^MR||Priorbench^Synthetic^{n}||19600101|O\r"
    "PV1|1|E\r"
    "ORC|NW|{placer}^BENCH|||SC||^^^{now}^^S\r"
    "OBR|1|{placer}^BENCH||CTCHEST^CT chest^BENCHPROC|||{now}|||||||||||||||||CT\r"
)


def patient_id(n: int, run: str) -> str:
    return f"PB{run}{n:04d}"


def load_priors(orthanc: OrthancProcess, workdir: Path, orders: int, priors: int, images: int, run: str) -> dict:
    """Each order's patient's earlier studies into Orthanc; returns the load's size and time."""
    today = dt.date.today()
    size, seconds = 0, 0.0
    from pydicom.uid import generate_uid

    for n in range(orders):
        common = {
            "patient_id": patient_id(n, run),
            "issuer_of_patient_id": ISSUER,
            "patient_name": f"PRIORBENCH^SYNTHETIC^{n}",
        }
        folder = workdir / "priors" / str(n)
        files = []
        for k in range(priors):
            uid = generate_uid()
            files += write_ct_study(
                folder / f"ct{k}",
                images,
                study_instance_uid=uid,
                modality="CT",
                accession_number=f"OLD{n:04d}{k}",
                study_date=today - dt.timedelta(days=365 * (k + 1)),
                **common,
            )
        files += write_study(
            folder / "mr",
            2,
            study_instance_uid=generate_uid(),
            modality="MR",
            rows=64,
            columns=64,
            accession_number=f"OLD{n:04d}M",
            study_date=today - dt.timedelta(days=200),
            **common,
        )
        size += sum(f.stat().st_size for f in files)
        seconds += store.storescu(orthanc.dicom_port, orthanc.aet, files)
        shutil.rmtree(folder)
    return {"MB": round(size / 1e6, 1), "storescu_seconds": round(seconds, 1)}


def mllp_send(port: int, message: str, timeout: float = 60.0) -> str:
    """One message over its own MLLP connection (HL7 v2 Implementation Guide, Appendix C); the ACK."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"\x0b" + message.encode() + b"\x1c\r")
        buf = b""
        while b"\x1c\r" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("the MLLP listener closed the connection")
            buf += chunk
    return buf[1 : buf.index(b"\x1c\r")].decode()


class Mllp:
    """``manage.py run_mllp --workers 2`` (the Procfile's) on an ephemeral port."""

    def __init__(self, workdir: Path, env: dict):
        self.port = free_port()
        self.log = open(workdir / "mllp.log", "wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "run_mllp",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "2",
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port)

    def stop(self) -> None:
        stop(self.process)
        self.log.close()


class Orders:
    """The order and exam of each patient, run on their schedule from a small thread pool."""

    def __init__(self, engine, mllp_port: int, workdir: Path, run: str, exam_images: int, exam_seconds: float):
        self.engine, self.mllp_port, self.workdir, self.run = engine, mllp_port, workdir, run
        self.exam_images, self.exam_seconds = exam_images, exam_seconds
        self.rows: dict[int, dict] = {}
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="order")
        self.exams: ThreadPoolExecutor | None = None  # one thread per exam: each waits for its time
        self.errors: list[str] = []

    def order(self, n: int) -> None:
        from django.db import connection

        from ris.models import RequestedProcedure

        try:
            placer = f"PB{self.run}{n:05d}"
            now = time.strftime("%Y%m%d%H%M%S")
            sent = time.time()
            ack = mllp_send(
                self.mllp_port,
                ORDER.format(now=now, cid=f"{placer}-1", pid=patient_id(n, self.run), n=n, placer=placer),
            )
            acked = time.time()
            if "MSA|AA|" not in ack:
                raise RuntimeError(f"order {n}: {ack!r}")
            rp = RequestedProcedure.objects.get(order__placer_order_number=placer)
            with self.lock:
                self.rows[n] = {"n": n, "rp": rp.pk, "order_sent": sent, "order_acked": acked}
            self.exams.submit(self.exam, n, rp.pk, acked + self.exam_seconds)
        except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
            self.errors.append(f"order {n}: {type(exc).__name__}: {exc}")
        finally:
            connection.close()

    def exam(self, n: int, rp_pk: int, at: float) -> None:
        from django.db import connection

        from ris.models import RequestedProcedure

        try:
            rp = RequestedProcedure.objects.get(pk=rp_pk)
            folder = self.workdir / "exams" / str(n)
            files = write_ct_study(
                folder,
                self.exam_images,
                study_instance_uid=rp.study_instance_uid,
                modality="CT",
                accession_number=rp.accession_number,
                patient_id=patient_id(n, self.run),
                issuer_of_patient_id=ISSUER,
                patient_name=f"PRIORBENCH^SYNTHETIC^{n}",
            )
            time.sleep(max(0.0, at - time.time()))
            started = time.time()
            store.storescu(self.engine.port, "PACS", files)
            n_set_sent, n_set_answered = mpps(
                self.engine.port,
                rp,
                files,
                patient_name=f"PRIORBENCH^SYNTHETIC^{n}",
                patient_id=patient_id(n, self.run),
            )
            shutil.rmtree(folder)
            with self.lock:
                self.rows[n].update(
                    {
                        "exam_due": at,
                        "exam_images_started": started,
                        "exam_complete": n_set_sent,
                        "n_set_answered": n_set_answered,
                    }
                )
        except Exception as exc:  # noqa: BLE001
            self.errors.append(f"exam {n}: {type(exc).__name__}: {exc}")
        finally:
            connection.close()

    def drive(self, orders: int, rate: float) -> None:
        interval = 3600.0 / rate
        self.exams = ThreadPoolExecutor(max_workers=max(1, orders), thread_name_prefix="exam")
        start = time.time()
        for n in range(orders):
            time.sleep(max(0.0, start + n * interval - time.time()))
            self.pool.submit(self.order, n)
        self.pool.shutdown(wait=True)  # every order placed, its exam submitted
        self.exams.shutdown(wait=True)


def settle(expected: int, rp_pks: list[int], timeout: float) -> None:
    """Wait until every order has its priors recorded and none is still being fetched."""
    from pacs.models import Prior
    from pacs.models import priors as pr

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = list(
            Prior.objects.filter(requested_procedure_id__in=rp_pks).values_list("requested_procedure_id", "status")
        )
        counts: dict[int, int] = {}
        for rp, _ in rows:
            counts[rp] = counts.get(rp, 0) + 1
        if all(counts.get(pk, 0) >= expected for pk in rp_pks) and not any(s in pr.OPEN for _, s in rows):
            return
        time.sleep(1.0)


def outcome(rows: dict[int, dict], expected: int, images: int) -> list[dict]:
    """Per order: priors chosen, READY (the engine holding every image of each), when (seconds
    after the ACK), and whether before the exam; the exam's study status in the engine."""
    from django.db.models import Count

    from pacs.models import Prior, Study
    from pacs.models import priors as pr
    from ris.models import RequestedProcedure

    out = []
    for n, row in sorted(rows.items()):
        priors = list(
            Prior.objects.filter(requested_procedure_id=row["rp"]).values(
                "status", "created_at", "finished_at", "attempts", "modalities_in_study", "study_instance_uid"
            )
        )
        held = dict(
            Study.objects.filter(study_instance_uid__in=[p["study_instance_uid"] for p in priors])
            .annotate(n=Count("instances"))
            .values_list("study_instance_uid", "n")
        )
        ready = [p for p in priors if p["status"] == pr.READY and held.get(p["study_instance_uid"]) == images]
        all_ready = len(priors) == expected and len(ready) == expected
        exam_study = Study.objects.filter(
            study_instance_uid=RequestedProcedure.objects.get(pk=row["rp"]).study_instance_uid
        ).first()
        t_ready = max(p["finished_at"].timestamp() for p in ready) if all_ready else None
        t_chosen = min(p["created_at"].timestamp() for p in priors) if priors else None
        exam = row.get("exam_complete")
        out.append(
            {
                "n": n,
                "expected": expected,
                "chosen": len(priors),
                "ready": len(ready),
                "chosen_not_ct": sum(1 for p in priors if "CT" not in p["modalities_in_study"].split("\\")),
                "attempts": sum(p["attempts"] for p in priors),
                "exam_study": exam_study.status if exam_study else None,
                "chosen_s": round(t_chosen - row["order_acked"], 3) if t_chosen else None,
                "ready_s": round(t_ready - row["order_acked"], 3) if t_ready else None,
                "exam_complete_s": round(exam - row["order_acked"], 3) if exam else None,
                "in_time": bool(t_ready and exam and t_ready <= exam),
            }
        )
    return out


def summary(per_order: list[dict]) -> dict:
    ready = [r["ready_s"] for r in per_order if r["ready_s"] is not None]
    chosen = [r["chosen_s"] for r in per_order if r["chosen_s"] is not None]
    out = {
        "orders": len(per_order),
        "in_time": sum(r["in_time"] for r in per_order),
        "all_priors_ready": len(ready),
        "wrong_choice": sum(1 for r in per_order if r["chosen"] != r["expected"] or r["chosen_not_ct"]),
    }
    out["in_time_share"] = round(out["in_time"] / len(per_order), 3) if per_order else 0.0
    for name, values in (("ready", ready), ("chosen", chosen)):
        if values:
            for p in (50, 90, 95):
                out[f"{name}_p{p}_s"] = round(pct(values, p / 100) / 1000, 2)
            out[f"{name}_max_s"] = round(max(values), 2)
    # the share of orders whose priors were all READY within each interval after the order
    out["ready_within"] = (
        {f"{s}s": round(sum(1 for v in ready if v <= s) / len(per_order), 3) for s in (10, 30, 60, 120, 300, 600)}
        if per_order
        else {}
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=100.0, help="orders an hour (evenly spaced)")
    parser.add_argument("--orders", type=int, default=17, help="orders in the run (17: ten minutes at 100/h)")
    parser.add_argument("--exam-minutes", type=float, default=5.0, help="from an order's ACK to its exam complete")
    parser.add_argument("--priors", type=int, default=2, help="relevant CT priors per patient in the VNA (<= 3)")
    parser.add_argument("--prior-images", type=int, default=200, help="images of each prior (512 x 512 CT)")
    parser.add_argument("--exam-images", type=int, default=20, help="images of each new exam")
    parser.add_argument(
        "--vna",
        choices=("dicom", "dicomweb"),
        default="dicom",
        help="how the engine reaches Orthanc: a DICOM VNA (C-FIND, C-MOVE) or a STOW-RS one (QIDO-RS, WADO-RS)",
    )
    parser.add_argument(
        "--settle-minutes",
        type=float,
        default=10.0,
        help="after the last exam, how long to wait for priors still being fetched",
    )
    args = parser.parse_args()
    if not 1 <= args.priors <= 3:
        parser.error("--priors is 1 to 3 (PRIORS_MAX_COUNT is 3)")

    import redis

    store.ensure_database()
    import django

    django.setup()
    from pacs.models import Prior, VnaDestination

    store.reset_tables()
    Prior.objects.all().delete()
    redis.Redis.from_url(os.environ["CELERY_BROKER_URL"]).flushdb()
    run = time.strftime("%H%M%S")
    started: list = []
    with tempfile.TemporaryDirectory(prefix="bench-priors-") as tmp:
        workdir = Path(tmp)
        try:
            engine = store.Engine(workdir, ("--workers", "2"))
            started.append(engine)
            orthanc = OrthancProcess(workdir / "orthanc", sync_storage=True, engine_port=engine.port,
                                     dicomweb=args.vna == "dicomweb")
            started.append(orthanc)
            orthanc.start()
            VnaDestination.objects.all().delete()
            if args.vna == "dicomweb":
                VnaDestination.objects.create(name="bench-orthanc", kind="stow", url=f"{orthanc.url}/dicom-web")
            else:
                VnaDestination.objects.create(
                    name="bench-orthanc", ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port
                )
            loaded = load_priors(orthanc, workdir, args.orders, args.priors, args.prior_images, run)
            print(f"VNA loaded: {loaded}", flush=True)
            mllp = Mllp(workdir, engine.env)
            started.append(mllp)
            worker = CeleryWorker(
                workdir, {**engine.env, "LOG_LEVEL": "INFO"}, name="priors", args=["--concurrency", "2"]
            )
            started.append(worker)
            worker.start()
            started.append(Beat(workdir, engine.env))
            orders = Orders(engine, mllp.port, workdir, run, args.exam_images, args.exam_minutes * 60)
            t0 = time.time()
            orders.drive(args.orders, args.rate)
            settle(args.priors, [r["rp"] for r in orders.rows.values()], args.settle_minutes * 60)
            per_order = outcome(orders.rows, args.priors, args.prior_images)
            result = {
                "vna": args.vna,
                "rate_per_hour": args.rate,
                "exam_minutes": args.exam_minutes,
                "priors": args.priors,
                "prior_images": args.prior_images,
                "exam_images": args.exam_images,
                "vna_load": loaded,
                "seconds": round(time.time() - t0, 1),
                "errors": orders.errors,
                **summary(per_order),
                "per_order": per_order,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        finally:
            for process in reversed(started):
                process.stop()
    print(json.dumps({k: v for k, v in result.items() if k != "per_order"}))
    print(
        f"\nPriors ready before the exam is complete: {result['in_time']} of {result['orders']} orders "
        f"({result['in_time_share']:.0%}); {args.orders} orders at {args.rate:g}/h, exam complete "
        f"{args.exam_minutes:g} min after the order, {args.priors} priors of {args.prior_images} images each, "
        f"from a {'DICOM (C-FIND, C-MOVE)' if args.vna == 'dicom' else 'DICOMweb (QIDO-RS, WADO-RS)'} VNA"
    )
    for name in ("chosen", "ready"):
        if f"{name}_p50_s" in result:
            print(
                f"  order ACK -> priors {name:6s}: p50 {result[f'{name}_p50_s']} s, p90 {result[f'{name}_p90_s']} s, "
                f"p95 {result[f'{name}_p95_s']} s, max {result[f'{name}_max_s']} s"
            )
    print(f"  share of orders with every prior READY within: {result['ready_within']}")
    if result["errors"]:
        print(f"  errors: {result['errors']}")
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    with open(out / "priors_ready.jsonl", "a") as fh:
        fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
