"""What the audit trail costs: each speed benchmark with auditing on and off (AUDIT_ENABLED),
alternating, and the ratios.

The four paths that write audit records on every operation:

* ``hl7``     -- bench/hl7_intake.py: ORM^O01 orders into ``run_mllp`` (the changes each order
  makes are recorded in its transaction), orders/s over 1 and 4 connections;
* ``mwl``     -- bench/mwl.py --skip-peers: MWL C-FIND against ``run_dicom`` (a Query record per
  C-FIND, by the writer thread), queries/s and p50 for 1 and 4 clients;
* ``store``   -- bench/store.py: C-STORE of a CT study into ``run_dicom`` (one record per
  association and study), MB/s (its storescp and Orthanc runs come along; only the engine counts);
* ``reading`` -- bench/reading_worklist.py: the reading worklist page under 10 users (gunicorn),
  requests/s and the server's p50 / p95.

Each benchmark runs ``--rounds`` times with auditing on and ``--rounds`` times off, the order
flipped every round (on, off / off, on / ...) so that a change of the machine's load weighs on
both alike; the median of each metric per setting is compared.  Printed: the ratio on/off of each
metric (throughput: below 1 is a cost; latency: above 1 is a cost) and whether the cost is within
``--limit`` (default 10 %).  Each benchmark gets a database of its own, ``<prefix>_<bench>``,
created when missing; the load average before and after is printed: on a shared machine a
difference below the noise between rounds says nothing.

    .venv/bin/python bench/audit_cost.py                       # all four, 3 rounds each
    .venv/bin/python bench/audit_cost.py --benches mwl,store --rounds 5 --json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (script and its arguments, metrics: (label, how to read it from the JSON lines, higher is better))
BENCHES: dict[str, dict] = {
    "hl7": {
        "args": lambda a: ["bench/hl7_intake.py", "--n", str(a.hl7_n), "--connections", "1,4", "--json"],
        "metrics": [
            ("orders/s x1", lambda rows: _pick(rows, "per_second", server="engine", connections=1), True),
            ("orders/s x4", lambda rows: _pick(rows, "per_second", server="engine", connections=4), True),
            ("ACK p50 ms x1", lambda rows: _pick(rows, "p50_ms", server="engine", connections=1), False),
        ],
    },
    "mwl": {
        "args": lambda a: ["bench/mwl.py", "--sizes", str(a.mwl_size), "--queries", str(a.mwl_queries),
                           "--skip-peers", "--json"],
        "metrics": [
            ("modality+day q/s x1", lambda rows: _pick(rows, "qps", server="engine", query="modality_day", clients=1),
             True),
            ("modality+day q/s x4", lambda rows: _pick(rows, "qps", server="engine", query="modality_day", clients=4),
             True),
            ("accession p50 ms x1", lambda rows: _pick(rows, "p50_ms", server="engine", query="accession", clients=1),
             False),
        ],
    },
    "store": {
        "args": lambda a: ["bench/store.py", "--images", str(a.store_images), "--runs", "3", "--json", "{json}"],
        "metrics": [
            ("C-STORE MB/s", lambda rows: rows[-1]["ingest"]["engine"]["MB_per_s"], True),
            ("C-STORE instances/s", lambda rows: rows[-1]["ingest"]["engine"]["instances_per_s"], True),
        ],
    },
    "reading": {
        "args": lambda a: ["bench/reading_worklist.py", "--studies", str(a.reading_studies), "--users", "10",
                           "--requests", str(a.reading_requests), "--json"],
        "metrics": [
            ("pages/s", lambda rows: _pick(rows, "per_second", bench="reading_worklist"), True),
            ("server p50 ms", lambda rows: _pick(rows, "server_p50_ms", bench="reading_worklist"), False),
            ("server p95 ms", lambda rows: _pick(rows, "server_p95_ms", bench="reading_worklist"), False),
        ],
    },
}


def _pick(rows: list[dict], key: str, **match):
    """``key`` of the first JSON row whose fields match (a string field: its start)."""
    for row in rows:
        if all((str(row.get(k, "")).startswith(v) if isinstance(v, str) else row.get(k) == v)
               for k, v in match.items()):
            return row[key]
    raise LookupError(f"no row with {match}")


def ensure_database(url: str) -> None:
    import psycopg

    base, name = url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def run_once(name: str, args, audit: bool, workdir: Path) -> dict:
    spec = BENCHES[name]
    url = f"{args.server}/{args.prefix}_{name}"
    ensure_database(url)
    json_file = workdir / f"{name}-{int(time.time() * 1000)}.json"
    command = [sys.executable, *[a.replace("{json}", str(json_file)) for a in spec["args"](args)]]
    env = {**os.environ, "DATABASE_URL": url, "AUDIT_ENABLED": "true" if audit else "false",
           "CELERY_BROKER_URL": args.broker}
    started = time.perf_counter()
    # In a session of its own: if this script is stopped, the benchmark and the servers it
    # started (run_mllp, run_dicom, gunicorn, Orthanc) are stopped with it.
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=3600)
    except BaseException:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        raise
    seconds = time.perf_counter() - started
    lines = stdout.splitlines() + (json_file.read_text().splitlines() if json_file.exists() else [])
    rows = []
    for line in lines:
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    if not rows:
        raise SystemExit(f"{name} (audit {'on' if audit else 'off'}) gave no results (exit {proc.returncode}):\n"
                         f"{stdout[-2000:]}\n{stderr[-3000:]}")
    values = {label: read(rows) for label, read, _ in spec["metrics"]}
    print(f"  {name:8} audit {'on ' if audit else 'off'} {seconds:6.0f} s  "
          + "  ".join(f"{k}={v}" for k, v in values.items()), flush=True)
    return values


def measure_calls(args) -> None:
    """``--calls``: the time, in this process, of what each audited operation adds on its own path
    (the audit hooks: building the record and handing it to the writer thread; the writer's
    INSERT is off that path), per call, against the database ``<prefix>_mwl``.  Less sensitive
    to a busy machine than the end-to-end ratios."""
    url = f"{args.server}/{args.prefix}_mwl"
    ensure_database(url)
    os.environ.update(DATABASE_URL=url, DJANGO_SETTINGS_MODULE="project.settings")
    sys.path.insert(0, str(ROOT))
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, check=True)
    import django

    django.setup()
    from types import SimpleNamespace

    from pydicom.dataset import Dataset

    from audit import trail
    from pacs import auditing

    assoc = SimpleNamespace(requestor=SimpleNamespace(ae_title="BENCH", address="127.0.0.1"),
                            server=SimpleNamespace(ae_title="PACS"))
    identifier = Dataset()
    identifier.PatientName = ""
    identifier.PatientID = ""
    item = Dataset()
    item.Modality = "CT"
    item.ScheduledProcedureStepStartDate = "20261126"
    identifier.ScheduledProcedureStepSequence = [item]
    rows = [{"_patient_id": f"P{i}", "_issuer_of_patient_id": "HOSP"} for i in range(20)]

    def per_call(fn, n: int, *, written: bool) -> float:
        """Microseconds per call; ``written``: including the writer thread's INSERTs (it runs in
        the same process and holds the same interpreter lock), until all are committed."""
        trail.flush(120)
        started = time.perf_counter()
        for _ in range(n):
            fn()
        if written:
            trail.flush(120)
        return (time.perf_counter() - started) / n * 1e6

    def query():
        auditing.mwl_query(assoc, identifier, rows, patient_id_path="_patient_id", issuer_path="_issuer_of_patient_id")

    def study():
        auditing.instance_received(assoc, "1.2.3", "P1", "HOSP")
        auditing.association_ended(assoc)

    query()  # the writer thread started, the connection opened
    n = 500
    results = {
        "MWL C-FIND with 20 answers: Query record queued": per_call(query, n, written=False),
        "the same, written (the writer's INSERT of the record and its 20 patients)": per_call(query, n, written=True),
        "C-STORE: each instance counted on the association": per_call(
            lambda: auditing.instance_received(assoc, "1.2.3", "P1", "HOSP"), 100_000, written=False),
        "association end: Instances Transferred record per study, written": per_call(study, n, written=True),
    }
    trail.stop()
    print(f"# in-process, database {url.rsplit('/', 1)[1]}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for label, us in results.items():
        print(f"{label}: {us:.1f} us")


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benches", default="hl7,mwl,store,reading", help="which, comma-separated")
    ap.add_argument("--rounds", type=int, default=3, help="runs per setting (on and off alternating)")
    ap.add_argument("--limit", type=float, default=0.10, help="the cost allowed (default 0.10: 10 %%)")
    ap.add_argument("--server", default="postgres://postgres@127.0.0.1:5432", help="PostgreSQL server URL")
    ap.add_argument("--prefix", default="pacs_audit_bench", help="database name prefix")
    ap.add_argument("--broker", default=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/14"))
    ap.add_argument("--hl7-n", type=int, default=2000)
    ap.add_argument("--mwl-size", type=int, default=10000)
    ap.add_argument("--mwl-queries", type=int, default=200)
    ap.add_argument("--store-images", type=int, default=200)
    ap.add_argument("--reading-studies", type=int, default=20000)
    ap.add_argument("--reading-requests", type=int, default=50)
    ap.add_argument("--json", action="store_true", help="also print the results as JSON lines")
    ap.add_argument("--calls", action="store_true", help="only the per-call time of the audit hooks, in-process")
    args = ap.parse_args()
    if args.calls:
        measure_calls(args)
        return 0
    signal.signal(signal.SIGTERM, _interrupted)
    names = [n.strip() for n in args.benches.split(",") if n.strip()]
    unknown = set(names) - set(BENCHES)
    if unknown:
        raise SystemExit(f"unknown benchmarks: {sorted(unknown)} (known: {sorted(BENCHES)})")
    load_before = os.getloadavg()
    print(f"# cpus={os.cpu_count()} load average before: {' '.join(f'{x:.2f}' for x in load_before)}", flush=True)
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"audit-cost-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for name in names:
        runs: dict[bool, list[dict]] = {True: [], False: []}
        for round_ in range(args.rounds):
            for audit in ((True, False) if round_ % 2 == 0 else (False, True)):
                runs[audit].append(run_once(name, args, audit, workdir))
        for label, _, higher_is_better in BENCHES[name]["metrics"]:
            on = statistics.median(r[label] for r in runs[True])
            off = statistics.median(r[label] for r in runs[False])
            ratio = on / off if off else float("nan")
            cost = (1 - ratio) if higher_is_better else (ratio - 1)
            results.append({"bench": name, "metric": label, "audit_on": on, "audit_off": off,
                            "ratio_on_off": round(ratio, 3), "cost": round(cost, 3),
                            "within_limit": cost <= args.limit,
                            "each_on": [r[label] for r in runs[True]], "each_off": [r[label] for r in runs[False]]})
    load_after = os.getloadavg()
    print(f"\n# load average after: {' '.join(f'{x:.2f}' for x in load_after)}; rounds={args.rounds}; "
          f"cost = 1 - on/off for throughput, on/off - 1 for latency; limit {args.limit:.0%}\n")
    print(f"| bench | metric | audit on | audit off | on/off | cost | within {args.limit:.0%} |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['bench']} | {r['metric']} | {r['audit_on']} | {r['audit_off']} | {r['ratio_on_off']:.3f} | "
              f"{r['cost']:+.1%} | {'yes' if r['within_limit'] else 'NO'} |")
    if args.json:
        for r in results:
            print(json.dumps({**r, "load_before": load_before, "load_after": load_after}))
    return 0 if all(r["within_limit"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
