"""HL7 intake benchmark: ORM^O01 orders through the real MLLP listener into PostgreSQL.

Runs, side by side in one run:

* ``engine``  -- ``manage.py run_mllp`` (store + apply in one durable transaction, then ACK),
  PostgreSQL with synchronous_commit=on, optionally ``--workers N`` listener processes;
* ``ceiling`` -- a no-persistence ACK-only server built on python-hl7's asyncio MLLP streams
  (``hl7.mllp.start_hl7_server``; parses with ``hl7.parse``, answers AA): the ceiling of
  Python framing on this machine.

Each is driven over 1 and 4 connections (one client process per connection, each sending
its share sequentially and waiting for every ACK).  Reports orders/s and ACK latency p50/p99.

``--tls``: the engine also listens with MLLP over TLS (``HL7_MLLP_TLS_PORT``, certificates of a
throw-away test CA, client certificates ``--tls-client-certificates``, default required), and
each engine run is followed by the same run over TLS, on the same listener processes, driven by
Python's ``ssl`` (one handshake per connection, as an EHR keeping its connection open); the
ratio TLS/clear is printed.  ``--rounds R`` repeats each case R times, clear and TLS alternating
(the order flipped every round), and prints the median of the ratios: on a shared machine one
pair of runs says little.

It checks afterwards that every order of the engine runs is in the database once.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/pacs_bench .venv/bin/python bench/hl7_intake.py --n 5000
    DATABASE_URL=... .venv/bin/python bench/hl7_intake.py --n 1000 --tls --rounds 5

Results go to stdout as a table and JSON lines (``--json``); write them in bench/RESULTS.md.
The sender BENCH_EHR^BENCH_HOSP is declared for 127.0.0.1 (``HL7_SENDERS``, unless the
environment sets it), so every message goes through the sender policy's declared path.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TEMPLATE = (
    "MSH|^~\\&|BENCH_EHR|BENCH_HOSP|PACS|RADIOLOGY|20250301081500||ORM^O01|{cid}|P|2.3.1||||||UNICODE UTF-8\r"
    "PID|1||{mrn}^^^BENCHMRN^MR||Benchpatient^Synthetic^{mrn}||19800215|F|||1 Synthetic Way^^Testtown^^00000\r"
    "PV1|1|O|RAD^CT1^01|||||1234^Referrer^Robert^^^Dr|||||||||||V{i}\r"
    "ORC|NW|{placer}^BENCH|||SC||^^^20250302093000^^R||20250301081500|||5678^Orderer^Olivia^^^Dr\r"
    "OBR|1|{placer}^BENCH||CTHEAD^CT Head without contrast^BENCHPROC|||20250301081500|||||||||"
    "5678^Orderer^Olivia^^^Dr||||||||CT|||^^^20250302093000^^R||||^Headache\r"
)


def message(run: str, i: int) -> bytes:
    return TEMPLATE.format(cid=f"{run}-{i}", mrn=f"M{i % 2000:06d}", i=i, placer=f"{run}{i:07d}").encode()


# --- client ------------------------------------------------------------------------------------
def client(port: int, run: str, indices: list[int], out: mp.Queue, tls: tuple[str, str, str] | None = None) -> None:
    """One connection sending ``indices`` in turn; ``tls`` = (CA file, certificate, key): over TLS."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is not None:
        context = ssl.create_default_context(cafile=tls[0])
        context.load_cert_chain(tls[1], tls[2])
        sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
    latencies, codes = [], {}
    buf = b""
    for i in indices:
        data = b"\x0b" + message(run, i) + b"\x1c\r"
        t0 = time.perf_counter()
        sock.sendall(data)
        while b"\x1c\r" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("server closed the connection")
            buf += chunk
        end = buf.index(b"\x1c\r")
        ack, buf = buf[1:end], buf[end + 2:]
        latencies.append(time.perf_counter() - t0)
        code = ack.split(b"MSA|", 1)[1][:2].decode()
        codes[code] = codes.get(code, 0) + 1
    sock.close()
    out.put((latencies, codes))


def drive(port: int, run: str, n: int, conns: int, tls: tuple[str, str, str] | None = None) -> dict:
    out: mp.Queue = mp.Queue()
    shares = [list(range(k, n, conns)) for k in range(conns)]
    procs = [mp.Process(target=client, args=(port, run, share, out, tls)) for share in shares]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = [out.get(timeout=1800) for _ in procs]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join()
    lat = sorted(x for r in results for x in r[0])
    codes: dict[str, int] = {}
    for r in results:
        for k, v in r[1].items():
            codes[k] = codes.get(k, 0) + v
    return {
        "n": n, "connections": conns, "seconds": round(elapsed, 3), "per_second": round(n / elapsed, 1),
        "p50_ms": round(statistics.median(lat) * 1000, 2), "p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 2),
        "acks": codes,
    }


# --- servers -----------------------------------------------------------------------------------
CEILING = r'''
import asyncio, sys, hl7, uuid
from hl7.mllp import start_hl7_server

async def handle(reader, writer):
    try:
        while not writer.is_closing():
            msg = await reader.readmessage()
            ack = msg.create_ack("AA", message_id=uuid.uuid4().hex[:20])
            writer.writemessage(ack)
            await writer.drain()
    except asyncio.IncompleteReadError:
        pass
    finally:
        writer.close()

async def main():
    server = await start_hl7_server(handle, "127.0.0.1", 0, limit=16 * 1024 * 1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
'''


def analyze(connection) -> None:
    """Refresh the planner statistics of the tables the intake touches, as autovacuum would in
    production (it may be off on a development server: then a table that grew from empty keeps
    its empty-table estimates and the duplicate-key lookup is planned as a scan)."""
    with connection.cursor() as cur:
        cur.execute("ANALYZE hl7gateway_inboundmessage, ris_order, ris_requestedprocedure, ris_scheduledprocedurestep,"
                    " ris_visit, ris_patient, ris_patientidentifier")
    connection.close()


def start(cmd: list[str], env: dict) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    try:
        port = int(line.split(":")[-1].split()[0]) if "listening" in line else int(line)
    except ValueError:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}") from None
    return proc, port


def tls_setup(env: dict, client_certificates: str) -> tuple[tuple[str, str, str], list[str]]:
    """A throw-away CA with the engine's and the EHR's certificates; the listener's environment
    and arguments for MLLP over TLS on a free port.  Returns the client's files and the arguments."""
    from tests.support.tls_certs import TestPKI

    pki = TestPKI(Path(tempfile.mkdtemp(prefix="hl7-bench-tls-")))
    engine = pki.issue("engine", dns=["localhost"], ips=["127.0.0.1"])
    ehr = pki.issue("bench-ehr")
    env.update(TLS_CERTIFICATE=str(engine.chain), TLS_PRIVATE_KEY=str(engine.key), TLS_CA_CERTIFICATES=str(pki.ca_file),
               HL7_MLLP_TLS_CLIENT_CERTIFICATES=client_certificates)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        tls_port = probe.getsockname()[1]
    return (str(pki.ca_file), str(ehr.chain), str(ehr.key)), ["--tls-port", str(tls_port)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="orders per run (default 5000)")
    ap.add_argument("--connections", default="1,4", help="connection counts (default 1,4)")
    ap.add_argument("--workers", default="1", help="run_mllp --workers values to try, e.g. 1,2")
    ap.add_argument("--json", action="store_true", help="print JSON lines too")
    ap.add_argument("--tls", action="store_true", help="also run each engine case over MLLP over TLS")
    ap.add_argument("--tls-client-certificates", default="required", choices=("none", "optional", "required"))
    ap.add_argument("--rounds", type=int, default=1, help="engine runs per case (with --tls: clear and TLS "
                                                              "alternating; the median ratio is printed)")
    args = ap.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit("set DATABASE_URL=postgres://... (a database of its own: the benchmark fills it)")
    env = {"HL7_SENDERS": "BENCH_EHR^BENCH_HOSP@127.0.0.1:orders", **os.environ, "PYTHONUNBUFFERED": "1",
           "LOG_LEVEL": "WARNING"}
    py = sys.executable
    subprocess.run([py, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SHOW synchronous_commit")
        sync = cur.fetchone()[0]
        cur.execute("SHOW fsync")
        fsync = cur.fetchone()[0]
        cur.execute("SHOW autovacuum")
        autovacuum = cur.fetchone()[0]
    connection.close()
    conn_counts = [int(c) for c in args.connections.split(",")]
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = []
    proc, port = start([py, "-c", CEILING], env)
    try:
        for conns in conn_counts:
            drive(port, f"W{int(time.time()) % 100000}", min(args.n, 500), conns)  # warm-up
            rows.append({"server": "ceiling (python-hl7 asyncio, no storage)", **drive(port, "X", args.n, conns)})
    finally:
        proc.terminate()
        proc.wait()
    from ris.models import Order

    tls, tls_args = (tls_setup(env, args.tls_client_certificates) if args.tls else (None, []))
    modes = [("", None), (" over TLS", tls)] if tls else [("", None)]
    for workers in [int(w) for w in args.workers.split(",")]:
        proc, port = start([py, "manage.py", "run_mllp", "--host", "127.0.0.1", "--port", "0",
                            "--workers", str(workers), *tls_args], env)
        try:
            for conns in conn_counts:
                for round_ in range(args.rounds):
                    # Clear and TLS alternate, the order flipped every round, so that a change of
                    # the machine's load weighs on both alike.
                    for label, client_tls in (modes if round_ % 2 == 0 else modes[::-1]):
                        target = int(tls_args[1]) if client_tls else port
                        run = f"B{int(time.time() * 10) % 10**7}"
                        if round_ == 0:
                            drive(target, f"{run}w", min(args.n // 10, 200), conns, client_tls)  # warm-up
                        analyze(connection)
                        result = drive(target, run, args.n, conns, client_tls)
                        stored = Order.objects.filter(placer_order_number__regex=rf"^{run}\d{{7}}$").count()
                        connection.close()
                        rows.append({"server": f"engine run_mllp --workers {workers} (PostgreSQL){label}", **result,
                                     "orders_stored": stored, "tls": client_tls is not None, "workers": workers,
                                     "round": round_})
        finally:
            proc.terminate()
            proc.wait()
    print(f"\nsynchronous_commit={sync} fsync={fsync} autovacuum={autovacuum} cpus={os.cpu_count()} n={args.n} "
          f"load average before/after: {load_before} / {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print(f"{'server':52} {'conns':>5} {'msg/s':>8} {'p50 ms':>7} {'p99 ms':>7}  acks / stored")
    for r in rows:
        print(f"{r['server']:52} {r['connections']:>5} {r['per_second']:>8} {r['p50_ms']:>7} {r['p99_ms']:>7}  "
              f"{r['acks']} {r.get('orders_stored', '')}")
    ceiling = {r["connections"]: r["per_second"] for r in rows if r["server"].startswith("ceiling")}
    for r in rows:
        if r["server"].startswith("engine"):
            print(f"ratio engine/ceiling {r['server'][7:]} x{r['connections']}: "
                  f"{r['per_second'] / ceiling[r['connections']]:.2f}")
    cases = sorted({(r["workers"], r["connections"]) for r in rows if r.get("tls")})
    for workers, conns in cases:
        def rate(tls_: bool, round_: int, w=workers, c=conns) -> float:
            return next(r["per_second"] for r in rows if (r.get("tls"), r.get("workers"), r["connections"],
                                                          r.get("round")) == (tls_, w, c, round_))
        ratios = [rate(True, k) / rate(False, k) for k in range(args.rounds)]
        print(f"ratio TLS/clear run_mllp --workers {workers} x{conns}: median {statistics.median(ratios):.2f} "
              f"(rounds: {' '.join(f'{x:.2f}' for x in ratios)})")
    if args.json:
        for r in rows:
            print(json.dumps({**r, "synchronous_commit": sync, "load_before": load_before}))


if __name__ == "__main__":
    main()
