"""ORU^R01 delivery benchmark: signed reports through the outbox and a real Celery worker to an
MLLP sink that ACKs at once (target: >= 200 reports/s end to end).

Runs, side by side in one run, against the same sink (``tests/support/mllp_sink.py``, in this process):

* ``engine``  -- the real path: N reports signed through ``ris.services.reports.sign`` in one
  transaction (two destinations, billing and EHR: 2 N outbound rows); the clock starts at the
  commit, which publishes the delivery tasks (``transaction.on_commit``); ``celery -A project
  worker --concurrency C`` claims each row, sends it over MLLP, waits for the AA and records
  it; the clock stops when the last row is DELIVERED in PostgreSQL.  Checked afterwards:
  every row delivered, the sink received each MSH-10 exactly once.
* ``python-hl7`` -- python-hl7's ``hl7.client.MLLPClient`` sending the same number of rendered
  messages sequentially over one kept-open connection, waiting for each ACK: the ceiling of
  one Python sender with no database and no queue.
* ``one task per message`` -- the conventional outbox (``--per-message-n``): the same code with
  ``HL7_ORU_BATCH_SIZE=1`` and one Celery task per message published after the commit; each
  task claims, sends over its own connection and commits one message.
* ``client``  -- ``hl7gateway.client.send_message`` alone (one connection per message, as the
  worker does), sequentially: the transport part of the engine's cost.

    .venv/bin/python bench/oru_delivery.py --n 1000 --concurrency 2,4 --per-message-n 300 --stream-n 300 --signers 2

``--stream-n`` adds a run closer to a reading room: reports signed one per transaction by
``--signers`` processes while the worker delivers; it reports latency from the signature to the
ACK (p50/p95/max).  Its rate is bounded by how fast the signers sign, not by delivery.

Environment: BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/pacs_oru_bench; the
database is dropped and re-created), CELERY_BROKER_URL (default redis://127.0.0.1:6379/5; the
Redis DB is emptied).  Results: a table on stdout and JSON lines in bench/out/oru_delivery.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/pacs_oru_bench")
BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/5")
os.environ["DATABASE_URL"] = DB_URL
os.environ["CELERY_BROKER_URL"] = BROKER
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")
# With DATABASE_URL set the engine needs a SECRET_KEY (check pacs.E008); this one is for benchmarks only.
os.environ.setdefault("SECRET_KEY", "bench-only-not-a-production-key-0c4f8e2a9b7d1e6f3a5c")


def recreate_database() -> None:
    parts = urlsplit(DB_URL)
    name = parts.path.lstrip("/")
    base = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432), "-U", parts.username or "postgres"]
    subprocess.run(["dropdb", "--if-exists", "--force", *base, name], check=True)
    subprocess.run(["createdb", *base, name], check=True)


class Worker:
    def __init__(self, concurrency: int, tmp: Path, loglevel: str, extra_env: dict | None = None):
        self.concurrency, self.tmp, self.loglevel = concurrency, tmp, loglevel
        self.extra_env = extra_env or {}
        self.log = tmp / f"worker-{concurrency}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, VAR_DIR=str(self.tmp / "var"), PYTHONUNBUFFERED="1", **self.extra_env)
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/celery"), "-A", "project", "worker", "--loglevel", self.loglevel, "--concurrency",
             str(self.concurrency), "--without-gossip", "--without-mingle", "-n", f"bench{self.concurrency}@%h"],
            cwd=ROOT, env=env, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if b" ready." in self.log.read_bytes():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("worker did not start:\n" + self.log.read_text(errors="replace")[-3000:])

    def stop(self) -> None:
        out = ROOT / "bench" / "out"
        out.mkdir(exist_ok=True)
        if self.log.exists():
            (out / f"oru_worker_c{self.concurrency}.log").write_bytes(self.log.read_bytes()[-2_000_000:])
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def make_studies(n: int, user):
    """n invented studies (one patient each), ready to be signed."""
    import datetime as dt

    from django.utils import timezone

    from ris.models import Order, Patient, PatientIdentifier, RequestedProcedure, ScheduledProcedureStep, Visit

    stamp = int(time.time() * 1000)
    rps = []
    for i in range(n):
        p = Patient.objects.create(patient_name=f"BENCHPATIENT^SYNTHETIC^{i}", patient_sex="O")
        PatientIdentifier.objects.create(patient=p, id_number=f"B{stamp}{i}", assigning_authority="BENCH")
        visit = Visit.objects.create(patient=p, visit_number=f"V{stamp}{i}")
        order = Order.objects.create(patient=p, visit=visit, placer_order_number=f"P{stamp}{i}",
                                     placer_namespace="BENCH", filler_order_number=f"F{stamp}{i}")
        rp = RequestedProcedure.objects.create(
            order=order, requested_procedure_id=f"RP{i}", procedure_code_value="CTHEAD",
            procedure_code_meaning="CT head", study_instance_uid=f"2.25.{stamp}{i}",
            accession_number=f"B{stamp % 10**8}{i:06d}"[-16:],
        )
        ScheduledProcedureStep.objects.create(requested_procedure=rp, scheduled_procedure_step_id="1", modality="CT",
                                              scheduled_start=timezone.now() - dt.timedelta(hours=1))
        rps.append(rp)
    return rps


def run_engine(n: int, concurrency: int, sink, user, tmp: Path, loglevel: str, per_message: bool = False) -> dict:
    """``per_message``: the conventional outbox as a peer -- one task per message published after
    the commit, each claiming, sending (own connection) and committing one message
    (HL7_ORU_BATCH_SIZE=1, no wake-up coalescing)."""
    import redis
    from django.db import transaction
    from django.db.models import Max

    from hl7gateway.models import OutboundMessage
    from hl7gateway.outbox import publish
    from ris.services.reports import sign

    redis.Redis.from_url(BROKER).flushdb()
    rps = make_studies(n, user)
    worker = Worker(concurrency, tmp, loglevel, {"HL7_ORU_BATCH_SIZE": "1"} if per_message else None)
    worker.start()
    real_wake = publish.wake
    if per_message:
        publish.wake = lambda ids: 0
    try:
        received_before = sink.count
        first_id = (OutboundMessage.objects.aggregate(m=Max("id"))["m"] or 0) + 1
        s0 = time.perf_counter()
        with transaction.atomic():
            for rp in rps:
                sign(rp.pk, user, "FINAL", findings="No acute intracranial abnormality.\nVentricles normal.",
                     impression="Normal CT head.")
            signing_seconds = time.perf_counter() - s0
            t0_wall = time.time()
            t0 = time.perf_counter()
        rows = OutboundMessage.objects.filter(id__gte=first_id)
        if per_message:
            publish.dispatch(list(rows.order_by("id").values_list("id", flat=True)))
        published = time.perf_counter() - t0  # commit + publishing the tasks
        total = rows.count()
        deadline = time.monotonic() + max(120.0, n / 5)
        while time.monotonic() < deadline:
            if rows.filter(status="DELIVERED").count() == total:
                break
            time.sleep(0.05)
        last = rows.aggregate(m=Max("delivered_at"))["m"]
        delivered = rows.filter(status="DELIVERED").count()
        elapsed = last.timestamp() - t0_wall if last else float("nan")
        ids = sink.control_ids()[received_before:]
        latencies = sorted(
            (r.delivered_at.timestamp() - t0_wall) for r in rows.only("delivered_at") if r.delivered_at
        )
    finally:
        publish.wake = real_wake
        worker.stop()
    return {
        "peer": "one task per message" if per_message else "engine", "concurrency": concurrency, "reports": n, "messages": total, "delivered": delivered,
        "exactly_once": len(ids) == total and len(set(ids)) == total,
        "seconds": round(elapsed, 3), "reports_per_s": round(n / elapsed, 1),
        "messages_per_s": round(total / elapsed, 1), "publish_seconds": round(published, 3),
        "signing_reports_per_s": round(n / signing_seconds, 1),
        "first_delivery_s": round(latencies[0], 3) if latencies else None,
        "median_delivery_s": round(statistics.median(latencies), 3) if latencies else None,
    }


def _signer(rp_ids: list[int], user_id: int) -> None:
    """A signing process: one transaction (and one commit, one wake-up) per report."""
    from django.contrib.auth.models import User
    from django.db import connections

    from ris.services.reports import sign

    connections.close_all()
    user = User.objects.get(pk=user_id)
    for pk in rp_ids:
        sign(pk, user, "FINAL", findings="No acute intracranial abnormality.", impression="Normal CT head.")
    connections.close_all()


def run_stream(n: int, signers: int, concurrency: int, user, tmp: Path, loglevel: str) -> dict:
    """Reports signed one per transaction by several processes while the worker delivers:
    latency from the signature (row created) to the ACK recorded, and the rate achieved."""
    import multiprocessing as mp

    import redis
    from django.db import connections
    from django.db.models import Max

    from hl7gateway.models import OutboundMessage

    redis.Redis.from_url(BROKER).flushdb()
    rps = make_studies(n, user)
    worker = Worker(concurrency, tmp, loglevel)
    worker.start()
    try:
        first_id = (OutboundMessage.objects.aggregate(m=Max("id"))["m"] or 0) + 1
        connections.close_all()
        shares = [[rp.pk for rp in rps[k::signers]] for k in range(signers)]
        ctx = mp.get_context("fork")
        procs = [ctx.Process(target=_signer, args=(share, user.pk)) for share in shares]
        t0_wall = time.time()
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        signed_s = time.time() - t0_wall
        rows = OutboundMessage.objects.filter(id__gte=first_id)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and rows.exclude(status="DELIVERED").exists():
            time.sleep(0.05)
        values = list(rows.values_list("created_at", "delivered_at"))
    finally:
        worker.stop()
    latencies = sorted((d - c).total_seconds() for c, d in values if d)
    last = max(d for _, d in values if d).timestamp()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 1)

    return {
        "peer": "engine-stream", "concurrency": concurrency, "signers": signers, "reports": n,
        "messages": len(values), "delivered": len(latencies), "seconds": round(last - t0_wall, 3),
        "signing_reports_per_s": round(n / signed_s, 1), "reports_per_s": round(n / (last - t0_wall), 1),
        "messages_per_s": round(len(values) / (last - t0_wall), 1),
        "latency_ms_p50": pct(0.50), "latency_ms_p95": pct(0.95), "latency_ms_max": round(latencies[-1] * 1000, 1),
    }


def sample_payloads(k: int) -> list[tuple[str, bytes]]:
    from hl7gateway.models import OutboundMessage

    rows = list(OutboundMessage.objects.order_by("id").values_list("message_control_id", "payload")[:k])
    return [(cid, bytes(p)) for cid, p in rows]


def run_python_hl7(port: int, payloads: list[tuple[str, bytes]], m: int) -> dict:
    import hl7.client

    t0 = time.perf_counter()
    with hl7.client.MLLPClient("127.0.0.1", port) as c:
        for i in range(m):
            ack = c.send_message(payloads[i % len(payloads)][1])
            assert b"MSA|AA|" in ack, ack
    elapsed = time.perf_counter() - t0
    return {"peer": "python-hl7 MLLPClient (1 connection, no DB)", "messages": m, "seconds": round(elapsed, 3),
            "messages_per_s": round(m / elapsed, 1)}


def run_client(port: int, payloads: list[tuple[str, bytes]], m: int) -> dict:
    from hl7gateway import client

    t0 = time.perf_counter()
    for i in range(m):
        cid, data = payloads[i % len(payloads)]
        result = client.send_message("127.0.0.1", port, data, message_control_id=cid)
        assert result.accepted, result
    elapsed = time.perf_counter() - t0
    return {"peer": "hl7gateway.client (connection per message, no DB)", "messages": m,
            "seconds": round(elapsed, 3), "messages_per_s": round(m / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="reports per engine run (2 messages each)")
    parser.add_argument("--concurrency", default="2,4", help="worker pool sizes to run, comma-separated")
    parser.add_argument("--loglevel", default="INFO", help="worker log level (INFO as in the Procfile)")
    parser.add_argument("--stream-n", type=int, default=0,
                        help="also sign this many reports one per transaction while the worker delivers")
    parser.add_argument("--signers", type=int, default=2, help="signing processes for --stream-n")
    parser.add_argument("--per-message-n", type=int, default=0,
                        help="also run the conventional one-task-per-message outbox (peer) with this many reports")
    args = parser.parse_args()

    recreate_database()
    import django

    django.setup()
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command

    from hl7gateway.models import OutboundDestination
    from tests.support.mllp_sink import MLLPSink

    call_command("migrate", verbosity=0)
    sink = MLLPSink(record_payloads=False).start()
    OutboundDestination.objects.create(name="billing", host="127.0.0.1", port=sink.port)
    OutboundDestination.objects.create(name="ehr", host="127.0.0.1", port=sink.port, hl7_version="2.3.1")
    user = User.objects.create_user("benchrad", first_name="Bench", last_name="Radiologist")
    user.groups.add(Group.objects.get(name="radiologist"))

    results = []
    with tempfile.TemporaryDirectory(prefix="oru-bench-") as tmp:
        for c in [int(x) for x in args.concurrency.split(",") if x]:
            results.append(run_engine(args.n, c, sink, user, Path(tmp), args.loglevel))
            print(json.dumps(results[-1]), flush=True)
        if args.per_message_n:
            c = int(args.concurrency.split(",")[0])
            results.append(run_engine(args.per_message_n, c, sink, user, Path(tmp), args.loglevel, per_message=True))
            print(json.dumps(results[-1]), flush=True)
        if args.stream_n:
            c = int(args.concurrency.split(",")[0])
            results.append(run_stream(args.stream_n, args.signers, c, user, Path(tmp), args.loglevel))
            print(json.dumps(results[-1]), flush=True)
    payloads = sample_payloads(200)
    m = 2 * args.n
    results.append(run_python_hl7(sink.port, payloads, m))
    print(json.dumps(results[-1]), flush=True)
    results.append(run_client(sink.port, payloads, m))
    print(json.dumps(results[-1]), flush=True)
    sink.down()

    ceiling = results[-2]["messages_per_s"]
    print()
    print(f"ORU delivery, {args.n} reports x 2 destinations; sink ACKs at once (AA)")
    print(f"{'peer':55} {'msg/s':>8} {'reports/s':>10} {'vs python-hl7':>14}")
    for r in results:
        name = r["peer"] + (f" (worker --concurrency {r['concurrency']})" if "concurrency" in r else "")
        if "signers" in r:
            name = f"engine, {r['signers']} signers, 1 report per transaction (worker -c {r['concurrency']})"
        reports = f"{r['reports_per_s']:.0f}" if "reports_per_s" in r else ""
        print(f"{name:55} {r['messages_per_s']:8.0f} {reports:>10} {r['messages_per_s'] / ceiling:13.2f}x")
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    with open(out / "oru_delivery.jsonl", "a") as f:
        for r in results:
            f.write(json.dumps({**r, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")


if __name__ == "__main__":
    main()
