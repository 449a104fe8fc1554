"""Benchmark: the reading worklist with 100,000 studies, 10 concurrent users, a real gunicorn.

What it does:

1. Creates (or reuses) a PostgreSQL database and fills it through the ORM with N studies
   (patient, identifier, order, requested procedure, scheduled step and reading worklist row
   each): 5 % STAT, 15 % HIGH, 80 % ROUTINE; six modalities; 30 % still to read.
2. Starts ``gunicorn project.wsgi`` (sync workers) on an ephemeral port, with an access log that
   records the server time of every request (``%(D)s``, microseconds from the parsed request
   to the sent response).
3. Logs in 10 users (radiologists) through the login form and lets them request, concurrently
   with ``requests`` sessions: the first page (STAT first, then longest waiting), a filtered
   page (modality + priority), a free-text search (name prefix) and a deep page (key cursor
   taken from a page far down the list).
4. Reports p50/p95/max of the server time (gunicorn) and of the time seen by the client, per
   kind of page; the target is p95 server time <= 150 ms.
5. Side by side in the same run, at the SQL level: our page query (one indexed scan of the
   denormalized ``worklist_readingitem``) against the query an unoptimized list would run
   (the same page computed by joining the RIS tables, sorted by CASE priority and time,
   OFFSET pagination), both timed with EXPLAIN ANALYZE; the ratio is printed.

Usage::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/pacs_bench_reading \\
        .venv/bin/python bench/reading_worklist.py --studies 100000 --users 10 --requests 100

The database is created if missing and kept for the next run (``--rebuild`` refills it).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/pacs_bench_reading"
os.environ.setdefault("DATABASE_URL", DEFAULT_DB)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/3")

MODALITIES = ["CT", "MR", "CR", "US", "MG", "NM"]
FAMILY = ["SMITH", "JONES", "GARCIA", "MILLER", "DAVIS", "MARTIN", "LOPEZ", "WILSON", "MOORE", "TAYLOR",
          "NGUYEN", "BROWN", "KOWALSKI", "MUELLER", "ROSSI", "DUBOIS", "SILVA", "SATO", "KIM", "OKAFOR"]
GIVEN = ["ANNA", "BEN", "CARLA", "DAVID", "EVA", "FRANK", "GRACE", "HUGO", "IRIS", "JON"]
PASSWORD = "bench-Reading-Pass-1"


def ensure_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def setup_django():
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def populate(n: int, rebuild: bool) -> None:
    from django.contrib.auth.models import Group, User
    from django.db import connection, transaction
    from django.utils import timezone

    from ris import states
    from ris.models import Order, Patient, PatientIdentifier, RequestedProcedure, ScheduledProcedureStep
    from worklist.models import ReadingItem, name_key

    have = ReadingItem.objects.count()
    if have == n and not rebuild:
        print(f"reusing {have} studies")
    else:
        with connection.cursor() as cur:
            for table in ("worklist_readingclaim", "worklist_readingitem", "ris_scheduledprocedurestep",
                          "ris_requestedprocedure", "ris_order", "ris_patientidentifier", "ris_patient"):
                cur.execute(f"TRUNCATE {table} CASCADE")
        rng = random.Random(42)
        now = timezone.now()
        t0 = time.monotonic()
        batch = 5000
        for start in range(0, n, batch):
            size = min(batch, n - start)
            with transaction.atomic():
                patients = Patient.objects.bulk_create([
                    Patient(patient_name=f"{rng.choice(FAMILY)}^{rng.choice(GIVEN)}^{i}") for i in range(size)])
                PatientIdentifier.objects.bulk_create([
                    PatientIdentifier(patient=p, id_number=f"B{start + i:09d}", assigning_authority="BENCH")
                    for i, p in enumerate(patients)])
                orders = Order.objects.bulk_create([
                    Order(patient=p, placer_order_number=f"BP{start + i:09d}", filler_order_number=f"BF{start + i:09d}")
                    for i, p in enumerate(patients)])
                prios = [rng.choices(["STAT", "HIGH", "ROUTINE"], [5, 15, 80])[0] for _ in range(size)]
                rps = RequestedProcedure.objects.bulk_create([
                    RequestedProcedure(order=o, requested_procedure_id=f"R{start + i}", requested_procedure_priority=prios[i],
                                       requested_procedure_description="BENCH EXAM", procedure_code_value="BENCH",
                                       study_instance_uid=f"2.25.9{start + i}", accession_number=f"BA{start + i:09d}",
                                       status=states.RP_COMPLETED)
                    for i, o in enumerate(orders)])
                mods = [rng.choice(MODALITIES) for _ in range(size)]
                ScheduledProcedureStep.objects.bulk_create([
                    ScheduledProcedureStep(requested_procedure=rp, scheduled_procedure_step_id=f"S{start + i}",
                                           modality=mods[i], scheduled_start=now, status=states.SPS_COMPLETED)
                    for i, rp in enumerate(rps)])
                items = []
                for i, (rp, p) in enumerate(zip(rps, patients, strict=True)):
                    status = rng.choices(["UNREAD", "DRAFT", "PRELIMINARY", "FINAL"], [24, 3, 3, 70])[0]
                    items.append(ReadingItem(
                        requested_procedure=rp, ready_at=now - __import__("datetime").timedelta(
                            minutes=rng.randint(1, 60 * 24 * 365)),
                        priority_rank=states.PRIORITY_RANK[prios[i]], requested_procedure_priority=prios[i],
                        modality=mods[i], patient_name=p.patient_name, patient_name_key=name_key(p.patient_name),
                        patient_id=f"B{start + i:09d}", issuer_of_patient_id="BENCH",
                        accession_number=rp.accession_number, requested_procedure_description="BENCH EXAM",
                        study_instance_uid=rp.study_instance_uid, report_status=status,
                        is_read=status == "FINAL"))
                ReadingItem.objects.bulk_create(items)
            print(f"  {start + size} studies ({time.monotonic() - t0:.0f} s)", flush=True)
        with connection.cursor() as cur:
            cur.execute("ANALYZE")
    group = Group.objects.get_or_create(name="radiologist")[0]
    for i in range(10):
        user, created = User.objects.get_or_create(username=f"benchrad{i}")
        if created:
            user.set_password(PASSWORD)
            user.save()
            user.groups.add(group)


# --- SQL-level comparison ------------------------------------------------------------------------

OURS = """EXPLAIN (ANALYZE, FORMAT JSON)
SELECT * FROM worklist_readingitem WHERE is_read = false {extra}
ORDER BY priority_rank, ready_at, id LIMIT 51"""

NAIVE = """EXPLAIN (ANALYZE, FORMAT JSON)
SELECT rp.id, rp.accession_number, rp.requested_procedure_priority, p.patient_name, pi.id_number, s.modality,
       ri.ready_at, ri.report_status
FROM ris_requestedprocedure rp
JOIN ris_order o ON o.id = rp.order_id JOIN ris_patient p ON p.id = o.patient_id
JOIN LATERAL (SELECT id_number FROM ris_patientidentifier WHERE patient_id = p.id ORDER BY id LIMIT 1) pi ON true
JOIN LATERAL (SELECT modality FROM ris_scheduledprocedurestep WHERE requested_procedure_id = rp.id ORDER BY id LIMIT 1) s
  ON true
JOIN worklist_readingitem ri ON ri.requested_procedure_id = rp.id
WHERE ri.report_status <> 'FINAL' {extra_naive}
ORDER BY CASE rp.requested_procedure_priority WHEN 'STAT' THEN 0 WHEN 'HIGH' THEN 1 ELSE 2 END, ri.ready_at, rp.id
LIMIT 50 OFFSET {offset}"""


def explain_ms(sql: str, repeat: int = 5) -> float:
    from django.db import connection

    times = []
    with connection.cursor() as cur:
        for _ in range(repeat):
            cur.execute(sql)
            plan = cur.fetchone()[0]
            plan = plan[0] if isinstance(plan, list) else plan
            times.append(plan["Planning Time"] + plan["Execution Time"])
    return statistics.median(times)


def sql_comparison() -> list[tuple[str, float, float]]:
    rows = []
    cases = [
        ("first page", "", "", 0),
        ("filtered page (CT, STAT)", "AND modality = 'CT' AND priority_rank = 0", "AND s.modality = 'CT' "
         "AND rp.requested_procedure_priority = 'STAT'", 0),
        ("page 200 (deep)", "AND (priority_rank, ready_at, id) > (2, now() - interval '200 days', 0)", "", 10_000),
    ]
    for label, extra, extra_naive, offset in cases:
        ours = explain_ms(OURS.format(extra=extra))
        naive = explain_ms(NAIVE.format(extra_naive=extra_naive, offset=offset), repeat=3)
        rows.append((label, ours, naive))
    return rows


# --- HTTP load -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gunicorn(port: int, workers: int, access_log: Path) -> subprocess.Popen:
    env = dict(os.environ, DEBUG="false", ALLOWED_HOSTS="127.0.0.1,localhost", LOG_LEVEL="WARNING")
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/gunicorn"), "project.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
         "--access-logfile", str(access_log), "--access-logformat", "%(m)s %(U)s?%(q)s %(s)s %(D)s",
         "--log-level", "warning"],
        cwd=ROOT, env=env, start_new_session=True,
    )
    import requests

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/health/", timeout=2).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.2)
    stop(proc)
    raise SystemExit("gunicorn did not start")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def logged_in_session(base: str, username: str):
    import requests

    s = requests.Session()
    s.get(f"{base}/accounts/login/", timeout=10)
    r = s.post(f"{base}/accounts/login/", data={"username": username, "password": PASSWORD,
                                                "csrfmiddlewaretoken": s.cookies["csrftoken"], "next": "/"},
               headers={"Referer": f"{base}/accounts/login/"}, timeout=10, allow_redirects=False)
    if r.status_code != 302:
        raise SystemExit(f"login failed for {username}: {r.status_code}")
    return s


def deep_cursor(base: str, session, pages: int) -> str:
    """Follow 'next' links ``pages`` times and return the cursor found there (a deep page)."""
    url = f"{base}/"
    cursor = ""
    for _ in range(pages):
        html = session.get(url, timeout=30).text
        m = re.search(r'rel="next" href="\?(?:[^"]*&amp;)?after=([0-9.]+)"', html)
        if not m:
            break
        cursor = m.group(1)
        url = f"{base}/?after={cursor}"
    return cursor


def run_load(base: str, users: int, per_user: int, deep: str) -> dict[str, list[float]]:
    kinds = {
        "first page": "/",
        "filtered page (CT, STAT)": "/?modality=CT&priority=STAT",
        "search (name prefix)": "/?q=SMITH%5EANNA",
        "deep page (key cursor)": f"/?after={deep}",
    }
    client_ms: dict[str, list[float]] = {k: [] for k in kinds}
    errors: list[str] = []
    sessions = [logged_in_session(base, f"benchrad{i}") for i in range(users)]
    barrier = threading.Barrier(users)
    lock = threading.Lock()

    def user(i):
        s = sessions[i]
        names = list(kinds)
        barrier.wait()
        for j in range(per_user):
            kind = names[(i + j) % len(names)]
            t = time.perf_counter()
            r = s.get(base + kinds[kind], timeout=60)
            ms = (time.perf_counter() - t) * 1000
            with lock:
                if r.status_code != 200 or "reading-rows" not in r.text:
                    errors.append(f"{kind}: HTTP {r.status_code}")
                client_ms[kind].append(ms)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"{len(errors)} failed requests, e.g. {errors[:3]}")
    return client_ms, kinds


def server_times(access_log: Path, kinds: dict[str, str]) -> dict[str, list[float]]:
    by_path = {v: k for k, v in kinds.items()}
    out: dict[str, list[float]] = {k: [] for k in kinds}
    for line in access_log.read_text().splitlines():
        parts = line.split()
        if len(parts) != 4 or parts[0] != "GET":
            continue
        path = parts[1].rstrip("?")
        kind = by_path.get(path)
        if kind:
            out[kind].append(int(parts[3]) / 1000)
    return out


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * len(values) + 0.5) - 1))
    return values[k]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--requests", type=int, default=100, help="requests per user")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="gunicorn sync workers (default: cores)")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = ap.parse_args()

    ensure_database(os.environ["DATABASE_URL"])
    setup_django()
    populate(args.studies, args.rebuild)

    print("\nSQL, median of EXPLAIN ANALYZE (planning + execution), ms:")
    print(f"{'page':28} {'ours':>8} {'naive join':>11} {'ratio':>7}")
    for label, ours, naive in sql_comparison():
        print(f"{label:28} {ours:8.2f} {naive:11.2f} {naive / ours:6.0f}x")

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "access.log"
        port = free_port()
        proc = start_gunicorn(port, args.workers, log)
        base = f"http://127.0.0.1:{port}"
        try:
            deep = deep_cursor(base, logged_in_session(base, "benchrad0"), 200)
            log.write_text("")  # warm-up requests are not counted
            t = time.perf_counter()
            client_ms, kinds = run_load(base, args.users, args.requests, deep)
            wall = time.perf_counter() - t
            time.sleep(0.5)
            server_ms = server_times(log, kinds)
        finally:
            stop(proc)
    total = sum(len(v) for v in client_ms.values())
    print(f"\nHTTP: {args.users} concurrent users, {total} requests in {wall:.1f} s ({total / wall:.0f} req/s), "
          f"gunicorn {args.workers} sync workers, {args.studies} studies")
    print(f"{'page':28} {'n':>5} {'server p50':>10} {'server p95':>10} {'server max':>10} {'client p50':>10} "
          f"{'client p95':>10}")
    worst = 0.0
    for kind in kinds:
        s, c = server_ms[kind], client_ms[kind]
        worst = max(worst, pct(s, 95))
        print(f"{kind:28} {len(s):5d} {pct(s, 50):10.1f} {pct(s, 95):10.1f} {max(s):10.1f} {pct(c, 50):10.1f} "
              f"{pct(c, 95):10.1f}")
    all_server = [x for v in server_ms.values() for x in v]
    print(f"{'all pages':28} {len(all_server):5d} {pct(all_server, 50):10.1f} {pct(all_server, 95):10.1f} "
          f"{max(all_server):10.1f}")
    ok = pct(all_server, 95) <= 150
    if args.json:
        import json

        print(json.dumps({"bench": "reading_worklist", "studies": args.studies, "requests": total,
                          "per_second": round(total / wall, 1), "server_p50_ms": round(pct(all_server, 50), 2),
                          "server_p95_ms": round(pct(all_server, 95), 2),
                          "client_p50_ms": round(pct([x for v in client_ms.values() for x in v], 50), 2)}))
    print(f"\ntarget p95 server time <= 150 ms: {'met' if ok else 'NOT met'} ({pct(all_server, 95):.1f} ms)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
