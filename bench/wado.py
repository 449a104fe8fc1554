"""Images out over DICOMweb, the engine beside Orthanc 1.10.1 with its DICOMweb plug-in, same run,
same study:

* (a) WADO-RS Retrieve of a whole study (PS3.18 10.4.1, ``GET /studies/{uid}``, Accept
  ``multipart/related; type="application/dicom"``): MB/s of the body, read to its last byte;
* (b) the first rendered frame a viewer asks for (PS3.18 10.4.1.1.3,
  ``.../instances/{uid}/frames/1/rendered``, Accept ``image/jpeg``): p50 / p95 latency, each
  request a different instance of the study.

The study: ``--images`` (200) synthetic CT images, 512 x 512, 16-bit (12 stored), CT-like pixels
(a body of soft tissue with a bone ring and noise, rescale to HU, a soft-tissue window; about
105 MB), written with pydicom (``bench/common.py``) and sent with one dcmtk ``storescu``
association each to the engine (``manage.py run_dicom --workers 2``, PostgreSQL) and to Orthanc
(``SyncStorageArea: true``, its SQLite index).  DICOMweb is served by ``gunicorn project.wsgi``
(the Procfile's web process, 2 workers, an API token, the audit trail on) and by Orthanc's
plug-in (``/dicom-web``).  One client for both: a kept-alive ``requests`` session.

A warm-up (not counted) checks both answers (as many parts as images, each part a DICOM file;
the rendered frames JPEG) and takes every web worker past its first request; then ``--runs`` rounds alternate which side goes first; each
round retrieves the study once per side and asks ``--renders`` rendered frames per side.
Medians over the rounds, and the ratio engine / Orthanc (MB/s: higher is better; p50: lower);
the CPU time the serving processes spent per retrieve (the gunicorn master and its workers;
Orthanc), a mean over the rounds: a cost the machine's drifting speed moves less than seconds.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/pacs_h3 CELERY_BROKER_URL=redis://127.0.0.1:6379/3 \\
        .venv/bin/python bench/wado.py --images 200 --runs 5 --renders 50

The database is created if missing and its image tables EMPTIED: never point it at a real
database.  Results: a table on stdout, one JSON line appended to bench/out/wado.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/pacs_h3")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/3")
# With DATABASE_URL set the engine needs a SECRET_KEY (check pacs.E008); this one is for benchmarks only.
os.environ.setdefault("SECRET_KEY", "bench-only-not-a-production-key-0c4f8e2a9b7d1e6f3a5c")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ["DEBUG"] = "false"

import store  # noqa: E402 - bench/store.py: database, engine process, storescu

from bench.common import Web, cpu_seconds, pct, write_ct_study  # noqa: E402
from tests.support.orthanc import OrthancProcess  # noqa: E402

DICOM_MULTIPART = 'multipart/related; type="application/dicom"'
READ = 1 << 20
WARM_UP = 4  # requests of each kind per side before the rounds: twice the engine's web workers


def retrieve(session, base: str, study_uid: str, *, check: int = 0, server: int = 0) -> dict:
    """The whole study, read to its last byte; with ``check``, the body is kept and must hold
    ``check`` DICOM parts; with ``server`` (a process id), the CPU seconds that process and its
    children spent meanwhile."""
    cpu0 = cpu_seconds(server) if server else 0.0
    t0 = time.perf_counter()
    response = session.get(f"{base}/studies/{study_uid}", headers={"Accept": DICOM_MULTIPART}, stream=True, timeout=300)
    if response.status_code != 200:
        raise RuntimeError(f"{base}: WADO-RS {response.status_code} {response.text[:300]}")
    size, kept = 0, []
    for block in response.iter_content(READ):
        size += len(block)
        if check:
            kept.append(block)
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds(server) - cpu0 if server else 0.0
    if check:
        body = b"".join(kept)
        mark = response.headers["Content-Type"].split("boundary=", 1)[1].split(";")[0].strip().strip('"')
        parts = body.split(f"--{mark}".encode())[1:-1]
        dicom = sum(1 for p in parts if p.split(b"\r\n\r\n", 1)[-1][128:132] == b"DICM")
        if len(parts) != check or dicom != check:
            raise RuntimeError(f"{base}: {len(parts)} parts, {dicom} DICOM files, {check} expected")
    return {"seconds": seconds, "bytes": size, "MB_per_s": size / seconds / 1e6, "server_cpu": cpu}


def rendered(session, base: str, study_uid: str, instance: tuple[str, str]) -> float:
    series_uid, sop_uid = instance
    t0 = time.perf_counter()
    response = session.get(
        f"{base}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/frames/1/rendered",
        headers={"Accept": "image/jpeg"},
        timeout=60,
    )
    seconds = time.perf_counter() - t0
    if response.status_code != 200 or not response.content.startswith(b"\xff\xd8"):
        raise RuntimeError(
            f"{base}: rendered {response.status_code} {response.headers.get('Content-Type')} {response.content[:200]!r}"
        )
    return seconds


def bench(workdir: Path, images: int, runs: int, renders: int) -> dict:
    import requests
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    study_uid = generate_uid()
    files = write_ct_study(
        workdir / "study",
        images,
        study_instance_uid=study_uid,
        accession_number="",
        patient_id="WADOBENCH",
        patient_name="BENCH^WADO",
    )
    size = sum(f.stat().st_size for f in files)
    instances = []
    for f in files:
        ds = dcmread(f, stop_before_pixels=True)
        instances.append((str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)))
    started = []
    try:
        engine = store.Engine(workdir, ("--workers", "2"))
        started.append(engine)
        web = Web(engine.env, workdir / "web.log")
        started.append(web)
        orthanc = OrthancProcess(workdir / "orthanc", sync_storage=True, dicomweb=True, engine_port=engine.port)
        started.append(orthanc)
        orthanc.start()
        store.storescu(engine.port, "PACS", files)
        store.storescu(orthanc.dicom_port, orthanc.aet, files)
        shutil.rmtree(workdir / "study")
        engine_http = requests.Session()
        engine_http.headers["Authorization"] = f"Token {web.api_token('wadobench')}"
        sides = {"engine": (engine_http, web.dicomweb, web.process.pid),
                 "orthanc": (requests.Session(), f"{orthanc.url}/dicom-web", orthanc.process.pid)}
        for http, base, _ in sides.values():  # checks, then warm-up (every web worker past its first request)
            retrieve(http, base, study_uid, check=images)
            for k in range(WARM_UP):
                retrieve(http, base, study_uid)
                rendered(http, base, study_uid, instances[k % images])
        rows = []
        for run in range(runs):
            order = ("engine", "orthanc") if run % 2 == 0 else ("orthanc", "engine")
            picked = [instances[(run * renders + k) % images] for k in range(renders)]
            row: dict = {"run": run, "first": order[0]}
            for name in order:
                http, base, pid = sides[name]
                got = retrieve(http, base, study_uid, server=pid)
                latencies = [rendered(http, base, study_uid, i) for i in picked]
                row[name] = {
                    "retrieve_MB_per_s": round(got["MB_per_s"], 1),
                    "retrieve_seconds": round(got["seconds"], 3),
                    "retrieve_server_cpu_s": round(got["server_cpu"], 3),
                    "body_MB": round(got["bytes"] / 1e6, 1),
                    "rendered_p50_ms": pct(latencies, 0.5),
                    "rendered_p95_ms": pct(latencies, 0.95),
                }
            row["retrieve_engine_over_orthanc"] = round(
                row["engine"]["retrieve_MB_per_s"] / row["orthanc"]["retrieve_MB_per_s"], 2
            )
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        for process in reversed(started):
            process.stop()

    def med(side: str, key: str) -> float:
        return round(statistics.median(r[side][key] for r in rows), 2)

    out: dict = {
        "images": images,
        "study_MB": round(size / 1e6, 1),
        "runs": runs,
        "renders_per_run": renders,
        "rounds": rows,
    }
    for side in ("engine", "orthanc"):
        out[side] = {
            k: med(side, k) for k in ("retrieve_MB_per_s", "retrieve_seconds", "rendered_p50_ms", "rendered_p95_ms")
        }
        # CPU is counted in clock ticks (10 ms): a mean over the rounds, not a median.
        out[side]["retrieve_server_cpu_ms"] = round(
            1000 * statistics.fmean(r[side]["retrieve_server_cpu_s"] for r in rows), 1)
    out["retrieve_engine_over_orthanc"] = round(
        out["engine"]["retrieve_MB_per_s"] / out["orthanc"]["retrieve_MB_per_s"], 2
    )
    out["retrieve_engine_over_orthanc_per_run"] = [r["retrieve_engine_over_orthanc"] for r in rows]
    out["rendered_p50_engine_over_orthanc"] = round(
        out["engine"]["rendered_p50_ms"] / out["orthanc"]["rendered_p50_ms"], 2
    )
    return out


def profile(workdir: Path, images: int, renders: int) -> None:
    """The engine's two views called in this process under cProfile (Django's test client, the
    study stored through ``run_dicom`` first): where a retrieve and a rendered frame spend time."""
    import cProfile
    import pstats

    import django
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    django.setup()
    from django.conf import settings
    from django.test import Client

    study_uid = generate_uid()
    files = write_ct_study(
        workdir / "study",
        images,
        study_instance_uid=study_uid,
        accession_number="",
        patient_id="WADOBENCH",
        patient_name="BENCH^WADO",
    )
    instances = [
        (str(d.SeriesInstanceUID), str(d.SOPInstanceUID)) for d in (dcmread(f, stop_before_pixels=True) for f in files)
    ]
    engine = store.Engine(workdir, ("--workers", "2"))
    try:
        store.storescu(engine.port, "PACS", files)
    finally:
        engine.stop()
    settings.STORAGE_DIR = engine.storage
    web = Web(engine.env, workdir / "web.log")
    try:
        key = web.api_token("wadoprofile")
    finally:
        web.stop()
    client = Client(HTTP_AUTHORIZATION=f"Token {key}", HTTP_HOST="127.0.0.1")

    def run_retrieve():
        response = client.get(f"/dicomweb/studies/{study_uid}", HTTP_ACCEPT=DICOM_MULTIPART)
        return sum(len(b) for b in response.streaming_content)

    def run_rendered():
        for series_uid, sop_uid in instances[:renders]:
            response = client.get(
                f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/frames/1/rendered",
                HTTP_ACCEPT="image/jpeg",
            )
            assert response.status_code == 200, response.content[:200]

    run_retrieve()
    for name, call in (("retrieve", run_retrieve), ("rendered", run_rendered)):
        profiler = cProfile.Profile()
        t0 = time.perf_counter()
        profiler.runcall(call)
        print(f"\n== {name}: {time.perf_counter() - t0:.3f} s")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--renders", type=int, default=50, help="rendered frames asked per side and round")
    parser.add_argument(
        "--profile", action="store_true", help="profile the engine's views in-process instead of the side-by-side run"
    )
    args = parser.parse_args()
    store.ensure_database()
    import django

    django.setup()
    store.reset_tables()
    with tempfile.TemporaryDirectory(prefix="bench-wado-") as tmp:
        if args.profile:
            profile(Path(tmp), args.images, args.renders)
            return
        result = bench(Path(tmp), args.images, args.runs, args.renders)
    result["at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(
        f"\nDICOMweb out, a study of {result['images']} CT images ({result['study_MB']} MB), median of "
        f"{result['runs']} rounds, {result['renders_per_run']} rendered frames per side and round:"
    )
    print(f"{'':10} {'WADO-RS MB/s':>13} {'seconds':>8} {'server CPU ms':>14} {'rendered p50 ms':>16} {'p95 ms':>8}")
    for side in ("engine", "orthanc"):
        r = result[side]
        print(
            f"{side:10} {r['retrieve_MB_per_s']:13.1f} {r['retrieve_seconds']:8.3f} {r['retrieve_server_cpu_ms']:14.1f} "
            f"{r['rendered_p50_ms']:16.2f} "
            f"{r['rendered_p95_ms']:8.2f}"
        )
    print(
        f"WADO-RS engine / Orthanc MB/s = {result['retrieve_engine_over_orthanc']} "
        f"(per round {result['retrieve_engine_over_orthanc_per_run']}); rendered p50 engine / Orthanc = "
        f"{result['rendered_p50_engine_over_orthanc']}"
    )
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    with open(out / "wado.jsonl", "a") as fh:
        fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
