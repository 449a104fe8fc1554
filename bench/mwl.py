"""MWL C-FIND benchmark: the engine's worklist SCP side by side with dcmtk's wlmscpfs and
Orthanc's worklist plug-in, serving the same items.

For each size N (default 1,000 / 10,000 / 100,000 scheduled steps):

* the steps are bulk-loaded into PostgreSQL (bulk_create, not the HL7 path), over
  N/100 days (1,000 days at 100,000) and 5 modalities, so that a modality + day query
  returns about 20 items at every size and an accession query one;
* the same items are written as worklist files (``<dir>/WLAE/*.wl``, one per step, with
  pydicom) for ``wlmscpfs`` and for Orthanc's ``libModalityWorklists.so``;
* three SCPs run as separate processes on ephemeral ports, with ``TCP_NODELAY=1``:
  ``manage.py run_dicom`` (the engine), ``/usr/bin/wlmscpfs``, ``/usr/sbin/Orthanc``;
* a pynetdicom client opens one association per query (association set-up included in
  every figure) and sends the modality + day query and the accession query; p50 / p95
  latency and queries/s are reported, and each query's match count is checked to be the
  same on all three SCPs;
* the engine is also driven by 4 client processes at once (queries/s ratio 4 vs 1);
* per-match cost: the engine answering a 10-day range (~200 matches) vs one day (~20);
* the client's own cost: the same client against wlmscpfs holding 100 items, and the
  client's CPU time per query (``time.process_time``);
* ``--client quiet`` (default) turns off pynetdicom's pretty-printing of every response
  identifier in the client (it runs even when nothing is logged); ``--client default`` keeps
  pynetdicom's defaults.  Either way the same client queries every SCP.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/pacs_h2_bench \\
        .venv/bin/python bench/mwl.py --sizes 1000,10000,100000

The database named by DATABASE_URL is created if missing and its RIS tables are EMPTIED:
never point it at a real database.  Results: a table on stdout and JSON lines (``--json``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/pacs_h2_bench")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
os.environ["TCP_NODELAY"] = "1"

MODALITIES = ["CT", "MR", "US", "CR", "NM"]
PER_DAY = 100  # steps per day at every size: 20 per modality and day
FIRST_DAY = datetime(2024, 1, 1, 0, 0)
WL_AE = "WLAE"
ORTHANC_AE = "ORTHANC"
ENGINE_AE = "PACS"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- data ---------------------------------------------------------------------------------------
def item_values(i: int) -> dict:
    """Step i, as plain values shared by the database load and the worklist files."""
    day = i // PER_DAY
    slot = i % PER_DAY
    start = FIRST_DAY + timedelta(days=day, hours=7 + (slot // 20) % 10, minutes=(slot * 7) % 60)
    return {
        "patient_name": f"BENCH^PATIENT^{i:06d}",
        "patient_id": f"BP{i:07d}",
        "birth": f"19{50 + i % 50:02d}0{1 + i % 9}1{i % 9}",
        "sex": "MF"[i % 2],
        "accession": f"BA{i:08d}",
        "rp_id": f"RP{i:07d}",
        "sps_id": f"SP{i:07d}",
        "study_uid": f"2.25.{4000000000 + i}",
        "modality": MODALITIES[slot % 5],
        "station": f"{MODALITIES[slot % 5]}1",
        "start": start,
        "description": "BENCH PROCEDURE",
    }


def load_database(n: int) -> None:
    """Empty the RIS tables and bulk-load n steps (one patient, order, procedure, step each)."""
    from django.conf import settings
    from django.db import connection
    from django.utils import timezone

    from ris.models import Order, Patient, PatientIdentifier, RequestedProcedure, ScheduledProcedureStep

    tz = timezone.get_default_timezone()
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE ris_scheduledprocedurestep, ris_requestedprocedure, ris_order, ris_visit, "
            "ris_patientidentifier, ris_patientmerge, ris_statuschange, ris_patient RESTART IDENTITY CASCADE"
        )
    batch = 5000
    for lo in range(0, n, batch):
        values = [item_values(i) for i in range(lo, min(n, lo + batch))]
        patients = Patient.objects.bulk_create(
            [Patient(patient_name=v["patient_name"], patient_sex=v["sex"],
                     patient_birth_date=datetime.strptime(v["birth"], "%Y%m%d").date()) for v in values]
        )
        PatientIdentifier.objects.bulk_create(
            [PatientIdentifier(patient=p, id_number=v["patient_id"], assigning_authority="BENCH")
             for p, v in zip(patients, values, strict=True)]
        )
        orders = Order.objects.bulk_create(
            [Order(patient=p, placer_order_number=v["accession"], referring_physician_name="REFERRER^BENCH")
             for p, v in zip(patients, values, strict=True)]
        )
        rps = RequestedProcedure.objects.bulk_create(
            [RequestedProcedure(order=o, requested_procedure_id=v["rp_id"],
                                requested_procedure_description=v["description"],
                                study_instance_uid=v["study_uid"], accession_number=v["accession"])
             for o, v in zip(orders, values, strict=True)]
        )
        ScheduledProcedureStep.objects.bulk_create(
            [ScheduledProcedureStep(requested_procedure=rp, scheduled_procedure_step_id=v["sps_id"],
                                    modality=v["modality"], scheduled_station_ae_title=v["station"],
                                    scheduled_start=v["start"].replace(tzinfo=tz),
                                    scheduled_procedure_step_description=v["description"])
             for rp, v in zip(rps, values, strict=True)]
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    del settings


def write_worklist_files(n: int, folder: Path) -> None:
    """One .wl file per step (what dump2dcm would write from a dump; pydicom is faster for 100,000)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / "lockfile").touch()
    for i in range(n):
        v = item_values(i)
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.AccessionNumber = v["accession"]
        ds.ReferringPhysicianName = "REFERRER^BENCH"
        ds.PatientName = v["patient_name"]
        ds.PatientID = v["patient_id"]
        ds.IssuerOfPatientID = "BENCH"
        ds.PatientBirthDate = v["birth"]
        ds.PatientSex = v["sex"]
        ds.StudyInstanceUID = v["study_uid"]
        ds.RequestedProcedureDescription = v["description"]
        ds.RequestedProcedureID = v["rp_id"]
        ds.RequestedProcedurePriority = "ROUTINE"
        sps = Dataset()
        sps.ScheduledStationAETitle = v["station"]
        sps.ScheduledProcedureStepStartDate = v["start"].strftime("%Y%m%d")
        sps.ScheduledProcedureStepStartTime = v["start"].strftime("%H%M%S")
        sps.Modality = v["modality"]
        sps.ScheduledPerformingPhysicianName = ""
        sps.ScheduledProcedureStepDescription = v["description"]
        sps.ScheduledProcedureStepID = v["sps_id"]
        sps.ScheduledProcedureStepStatus = "SCHEDULED"
        ds.ScheduledProcedureStepSequence = Sequence([sps])
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.save_as(folder / f"{i:07d}.wl", implicit_vr=False, little_endian=True)


# --- servers ------------------------------------------------------------------------------------
def wait_echo(port: int, ae_title: str, timeout: float = 60.0) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    deadline = time.monotonic() + timeout
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(Verification)
    while time.monotonic() < deadline:
        try:
            assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
            if assoc.is_established:
                assoc.release()
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    raise RuntimeError(f"SCP on port {port} did not come up")


def start_engine(workers: int, work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "DICOM_AE_TITLE": ENGINE_AE, "LOG_LEVEL": "WARNING", "MWL_MAX_RESULTS": "1000"}
    args = [sys.executable, "manage.py", "run_dicom", "--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        args += ["--workers", str(workers)]
    log = open(work / "engine.log", "ab")  # noqa: SIM115 - kept open for the process
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_echo(port, ENGINE_AE)
    except RuntimeError:
        stop(proc)
        sys.stderr.write((work / "engine.log").read_text()[-3000:])
        raise
    return proc, port


def start_wlmscpfs(folder: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(["/usr/bin/wlmscpfs", "-dfp", str(folder.parent), str(port)],
                            env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_echo(port, WL_AE)
    return proc, port


def start_orthanc(folder: Path, work: Path) -> tuple[subprocess.Popen, int]:
    port, http = free_port(), free_port()
    config = {
        "Name": "bench-mwl", "StorageDirectory": str(work / "orthanc-storage"),
        "IndexDirectory": str(work / "orthanc-index"), "HttpPort": http, "DicomPort": port,
        "DicomAet": ORTHANC_AE, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False, "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowFind": True,
        "DicomModalities": {"bench": ["BENCH", "127.0.0.1", 104]},
        "Plugins": ["/usr/share/orthanc/plugins/libModalityWorklists.so"],
        "Worklists": {"Enable": True, "Database": str(folder)},
    }
    path = work / "orthanc.json"
    path.write_text(json.dumps(config))
    proc = subprocess.Popen(["/usr/sbin/Orthanc", str(path)], env={**os.environ, "TCP_NODELAY": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_echo(port, ORTHANC_AE)
    return proc, port


def process_cpu(pid: int) -> float:
    """CPU seconds of a server: the process, its reaped children and its live children (workers,
    wlmscpfs's per-association forks).  Robust where wall-clock latency is not: a loaded machine."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid = int(fields[1])
        if int(entry.name) == pid:
            total += sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
        elif ppid == pid:
            total += sum(int(x) for x in fields[11:13]) / tick
    return total


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- client -------------------------------------------------------------------------------------
def query_dataset(kind: str, value) -> object:
    """A typical console query: the usual return keys, matching on modality + day or accession."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = Dataset()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                    "ReferringPhysicianName", "RequestedProcedureID", "RequestedProcedureDescription",
                    "StudyInstanceUID"):
        setattr(ds, keyword, "")
    sps = Dataset()
    for keyword in ("ScheduledStationAETitle", "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime",
                    "Modality", "ScheduledProcedureStepDescription", "ScheduledProcedureStepID"):
        setattr(sps, keyword, "")
    if kind == "accession":
        ds.AccessionNumber = value
    else:
        modality, day = value
        sps.Modality = modality
        sps.ScheduledProcedureStepStartDate = day
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    return ds


def _no_delay(event) -> None:
    """The client, like the SCPs, with Nagle off (the dcmtk peers get TCP_NODELAY=1)."""
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def quiet_client() -> None:
    """``--client quiet``: pynetdicom's client without its logging work -- by default it
    pretty-prints every response identifier (``_config.LOG_RESPONSE_IDENTIFIERS``) even when
    nothing is logged, about 0.4 ms per match here, and formats every PDU for its standard
    event handlers.  The same client for every SCP."""
    from pynetdicom import _config

    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.LOG_HANDLER_LEVEL = "none"


def run_queries(port: int, ae_title: str, queries: list, out=None) -> dict:
    """One association per query; returns latencies, matches per query and client CPU time."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import ModalityWorklistInformationFind

    if os.environ.get("BENCH_MWL_CLIENT", "quiet") == "quiet":
        quiet_client()

    ae = AE(ae_title="BENCH")
    ae.add_requested_context(ModalityWorklistInformationFind)
    handlers = [(evt.EVT_CONN_OPEN, _no_delay)]
    latencies, counts = [], []
    cpu0 = time.process_time()
    for kind, value in queries:
        ds = query_dataset(kind, value)
        t0 = time.perf_counter()
        assoc = ae.associate("127.0.0.1", port, ae_title=ae_title, evt_handlers=handlers)
        if not assoc.is_established:
            raise RuntimeError(f"association to {ae_title}:{port} failed")
        n = 0
        final = None
        for status, _identifier in assoc.send_c_find(ds, ModalityWorklistInformationFind):
            if status and status.Status in (0xFF00, 0xFF01):
                n += 1
            else:
                final = status.Status if status else None
        assoc.release()
        latencies.append(time.perf_counter() - t0)
        if final != 0x0000:
            raise RuntimeError(f"{ae_title}: final status {final!r}")
        counts.append(n)
    result = {"latencies": latencies, "counts": counts, "cpu": time.process_time() - cpu0}
    if out is not None:
        out.put(result)
    return result


def run_parallel(port: int, ae_title: str, queries: list, clients: int, server_pid: int | None = None) -> dict:
    """``clients`` processes share ``queries``; queries/s over the wall time of all of them,
    and (with ``server_pid``) the server's CPU time per query."""
    cpu0 = process_cpu(server_pid) if server_pid else 0.0
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    shares = [queries[k::clients] for k in range(clients)]
    procs = [ctx.Process(target=run_queries, args=(port, ae_title, share, out)) for share in shares]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    latencies = [x for r in results for x in r["latencies"]]
    server_cpu = (process_cpu(server_pid) - cpu0) / len(latencies) if server_pid else None
    return {"qps": len(latencies) / wall, "latencies": latencies, "counts": [c for r in results for c in r["counts"]],
            "cpu_per_query": sum(r["cpu"] for r in results) / len(latencies), "server_cpu_per_query": server_cpu}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def summary(name: str, size: int, kind: str, clients: int, r: dict) -> dict:
    lat = r["latencies"]
    return {
        "server": name, "size": size, "query": kind, "clients": clients, "n": len(lat),
        "p50_ms": round(statistics.median(lat) * 1000, 2), "p95_ms": round(pct(lat, 95) * 1000, 2),
        "qps": round(r["qps"], 1), "matches_mean": round(statistics.mean(r["counts"]), 1),
        "client_cpu_ms": round(r["cpu_per_query"] * 1000, 2),
        "server_cpu_ms": None if r.get("server_cpu_per_query") is None else round(r["server_cpu_per_query"] * 1000, 2),
    }


# --- main ---------------------------------------------------------------------------------------
def ensure_database() -> None:
    import psycopg

    url = os.environ["DATABASE_URL"]
    name = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=200, help="engine queries per kind and run")
    parser.add_argument("--peer-seconds", type=float, default=30.0, help="time budget per peer and query kind")
    parser.add_argument("--workers", type=int, default=1, help="run_dicom --workers for the engine")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--json", action="store_true", help="also print JSON lines")
    parser.add_argument("--client", choices=("quiet", "default"), default="quiet",
                        help="pynetdicom client as configured by default, or without its per-match "
                             "pretty-printing (the default here; same client for every SCP)")
    args = parser.parse_args()
    os.environ["BENCH_MWL_CLIENT"] = args.client  # the client processes of the 4-client runs too
    print(f"# client: pynetdicom, {args.client}")

    ensure_database()
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    rows: list[dict] = []
    rng = random.Random(42)
    work = Path(tempfile.mkdtemp(prefix="bench-mwl-"))
    try:
        # The client's own cost: wlmscpfs with 100 items.
        if not args.skip_peers:
            folder = work / "wl100" / WL_AE
            write_worklist_files(100, folder)
            proc, port = start_wlmscpfs(folder)
            try:
                baselines = {
                    "modality_day": [("modality_day", (MODALITIES[k % 5], FIRST_DAY.strftime("%Y%m%d")))
                                     for k in range(100)],
                    "accession": [("accession", item_values(k)["accession"]) for k in range(100)],
                }
                for kind, qs in baselines.items():
                    r = run_parallel(port, WL_AE, qs, 1, proc.pid)
                    rows.append(summary("wlmscpfs(100 items): client cost", 100, kind, 1, r))
            finally:
                stop(proc)
        for size in [int(s) for s in args.sizes.split(",")]:
            t0 = time.perf_counter()
            load_database(size)
            load_s = time.perf_counter() - t0
            days = max(1, size // PER_DAY)
            folder = work / f"wl{size}" / WL_AE
            if not args.skip_peers:
                write_worklist_files(size, folder)
            print(f"# size {size}: loaded in {load_s:.1f} s over {days} days", file=sys.stderr, flush=True)
            mod_day = [("modality_day", (rng.choice(MODALITIES),
                                         (FIRST_DAY + timedelta(days=rng.randrange(days))).strftime("%Y%m%d")))
                       for _ in range(args.queries)]
            accession = [("accession", item_values(rng.randrange(size))["accession"]) for _ in range(args.queries)]
            engine_counts: dict[str, list[int]] = {}
            engine, port = start_engine(args.workers, work)
            try:
                for kind, qs in (("modality_day", mod_day), ("accession", accession)):
                    run_parallel(port, ENGINE_AE, qs[:10], 1)  # warm-up
                    one = run_parallel(port, ENGINE_AE, qs, 1, engine.pid)
                    engine_counts[kind] = one["counts"]
                    rows.append(summary("engine", size, kind, 1, one))
                    four = run_parallel(port, ENGINE_AE, qs * 2, 4, engine.pid)
                    row = summary("engine", size, kind, 4, four)
                    row["ratio_4_vs_1"] = round(four["qps"] / one["qps"], 2)
                    rows.append(row)
                # per-match cost: 10 days (~200 matches) vs 1 day (~20)
                span = min(days, 10)
                wide = [("modality_day", (m, f"{(FIRST_DAY + timedelta(days=d)).strftime('%Y%m%d')}-"
                                             f"{(FIRST_DAY + timedelta(days=d + span - 1)).strftime('%Y%m%d')}"))
                        for m, d in ((rng.choice(MODALITIES), rng.randrange(max(1, days - span + 1)))
                                     for _ in range(max(20, args.queries // 4)))]
                narrow = mod_day[: len(wide)]
                r_wide = run_parallel(port, ENGINE_AE, wide, 1, engine.pid)
                r_narrow = run_parallel(port, ENGINE_AE, narrow, 1, engine.pid)
                extra = statistics.mean(r_wide["counts"]) - statistics.mean(r_narrow["counts"])
                if extra > 0:
                    per_match = (statistics.median(r_wide["latencies"]) - statistics.median(r_narrow["latencies"])) / extra
                    client_per_match = (r_wide["cpu_per_query"] - r_narrow["cpu_per_query"]) / extra
                    server_per_match = (r_wide["server_cpu_per_query"] - r_narrow["server_cpu_per_query"]) / extra
                    rows.append({"server": "engine", "size": size, "query": "per_match",
                                 "matches_wide": round(statistics.mean(r_wide["counts"]), 1),
                                 "matches_narrow": round(statistics.mean(r_narrow["counts"]), 1),
                                 "per_match_ms": round(per_match * 1000, 3),
                                 "client_cpu_per_match_ms": round(client_per_match * 1000, 3),
                                 "server_cpu_per_match_ms": round(server_per_match * 1000, 3)})
            finally:
                stop(engine)
            if not args.skip_peers:
                for name, starter, ae_title in (("wlmscpfs", lambda f: start_wlmscpfs(f), WL_AE),
                                                ("orthanc", lambda f: start_orthanc(f, work), ORTHANC_AE)):
                    proc, port = starter(folder)
                    try:
                        for kind, qs in (("modality_day", mod_day), ("accession", accession)):
                            probe = run_parallel(port, ae_title, qs[:1], 1)
                            per_query = max(statistics.median(probe["latencies"]), 1e-3)
                            count = max(3, min(len(qs), int(args.peer_seconds / per_query)))
                            r = run_parallel(port, ae_title, qs[:count], 1, proc.pid)
                            row = summary(name, size, kind, 1, r)
                            row["same_matches_as_engine"] = r["counts"] == engine_counts[kind][:count]
                            rows.append(row)
                    finally:
                        stop(proc)
                    shutil.rmtree(work / "orthanc-storage", ignore_errors=True)
                    shutil.rmtree(work / "orthanc-index", ignore_errors=True)
                shutil.rmtree(folder.parent, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(rows, args)


def report(rows: list[dict], args) -> None:
    print("| server | size | query | clients | n | p50 ms | p95 ms | q/s | matches | client CPU ms/q | server CPU ms/q |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("query") == "per_match":
            continue
        extra = f" (x{r['ratio_4_vs_1']} vs 1)" if "ratio_4_vs_1" in r else ""
        print(f"| {r['server']} | {r['size']:,} | {r['query']} | {r['clients']} | {r['n']} | {r['p50_ms']} | "
              f"{r['p95_ms']} | {r['qps']}{extra} | {r['matches_mean']} | {r['client_cpu_ms']} | {r['server_cpu_ms']} |")
    for r in rows:
        if r.get("query") == "per_match":
            print(f"per-match cost at {r['size']:,}: {r['per_match_ms']} ms per extra match end to end "
                  f"({r['matches_narrow']} -> {r['matches_wide']} matches); CPU per match: client "
                  f"{r['client_cpu_per_match_ms']} ms, engine {r['server_cpu_per_match_ms']} ms")
    sizes = sorted({r["size"] for r in rows if r["server"] == "engine" and r.get("clients") == 1})
    for kind in ("modality_day", "accession"):
        engine = {r["size"]: r for r in rows if r["server"] == "engine" and r.get("query") == kind
                  and r.get("clients") == 1}
        for size in sizes:
            peers = [r for r in rows if r["server"] in ("wlmscpfs", "orthanc") and r["size"] == size
                     and r["query"] == kind]
            if peers and size in engine:
                best = min(peers, key=lambda r: r["p50_ms"])
                same = all(p.get("same_matches_as_engine") for p in peers)
                print(f"{kind} at {size:,}: engine p50 {engine[size]['p50_ms']} ms vs {best['server']} "
                      f"{best['p50_ms']} ms = {best['p50_ms'] / engine[size]['p50_ms']:.1f}x faster; "
                      f"same match count on every query: {same}")
        if len(sizes) > 1 and sizes[0] in engine and sizes[-1] in engine:
            print(f"{kind}: p50 at {sizes[-1]:,} / p50 at {sizes[0]:,} = "
                  f"{engine[sizes[-1]]['p50_ms'] / engine[sizes[0]]['p50_ms']:.2f}")
    if args.json:
        for r in rows:
            print(json.dumps(r))


if __name__ == "__main__":
    main()
