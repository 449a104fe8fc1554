"""Study search benchmark: the engine's Query/Retrieve C-FIND SCP (PS3.4 C.4.1) and QIDO-RS
(PS3.18 10.6) side by side with Orthanc's C-FIND SCP and its DICOMweb plug-in, on the same studies.

* N studies (default 10,000) of one instance each are written with pydicom (synthetic: 2,000
  patients, 5 studies each, over 1,000 days, 5 modalities) and sent with dcmtk ``storescu +sd``
  to both: ``manage.py run_dicom --workers 2`` (the engine, on PostgreSQL) and ``/usr/sbin/Orthanc``
  (its SQLite index), each a separate process on an ephemeral port;
* QIDO-RS is served by ``gunicorn project.wsgi`` (the Procfile's web process, 2 workers) with an
  API token, and by Orthanc's DICOMweb plug-in (``/dicom-web``);
* a pynetdicom client (one association per query, as a workstation does), the lean C-FIND
  client of ``bench/lean_find.py`` (the same association and query written straight onto the
  socket: what the servers spend, without pynetdicom's own client cost in the figure) and a
  ``requests`` session (kept-alive), and a kept-alive ``http.client`` connection (the lean
  QIDO-RS client: no client library's cost in the figure) send the same searches to both, each
  search to one side then the other (the first side alternating): a patient's studies (PatientID, 5
  matches) and a day's studies (StudyDate, about 10 matches); p50 / p95 latency, and each
  search's match count checked to be the same on both sides.

    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/pacs_qr_bench \\
        .venv/bin/python bench/query_retrieve.py --studies 10000 --queries 200

The database is dropped and re-created.  Results: a table on stdout and JSON lines in
bench/out/query_retrieve.jsonl.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import Web, free_port, manage, pct, wait_port  # noqa: E402

DB_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/pacs_qr_bench")
ENV = {
    **os.environ, "DATABASE_URL": DB_URL, "DJANGO_SETTINGS_MODULE": "project.settings", "LOG_LEVEL": "WARNING",
    "CELERY_BROKER_URL": os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/6"), "TCP_NODELAY": "1",
    # With DATABASE_URL set the engine needs a SECRET_KEY (check pacs.E008); this one is for benchmarks only.
    "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-only-not-a-production-key-0c4f8e2a9b7d1e6f3a5c"),
    "DICOM_AE_TITLE": "PACS", "DICOM_NODES": "BENCH@127.0.0.1:store+qr", "QR_MAX_RESULTS": "1000",
    "WEB_WORKERS": "2", "DEBUG": "false",
}
PATIENTS, DAYS, FIRST_DAY = 2000, 1000, dt.date(2022, 1, 1)
MODALITIES = ("CT", "MR", "US", "CR", "NM")


def engine_env(work: Path) -> dict:
    return {**ENV, "VAR_DIR": str(work / "var"), "STORAGE_DIR": str(work / "var" / "storage")}


def recreate_database() -> None:
    parts = urlsplit(DB_URL)
    base = ["-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432), "-U", parts.username or "postgres"]
    subprocess.run(["dropdb", "--if-exists", "--force", *base, parts.path.lstrip("/")], check=True)
    subprocess.run(["createdb", *base, parts.path.lstrip("/")], check=True)


def write_studies(n: int, folder: Path) -> None:
    from tests.support.orthanc import make_instance

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        ds = make_instance(study_instance_uid=f"2.25.{9_000_000 + i}", series_instance_uid=f"2.25.{8_000_000 + i}",
                           sop_instance_uid=f"2.25.{7_000_000 + i}", modality=MODALITIES[i % len(MODALITIES)],
                           accession_number=f"QRB{i:07d}", patient_id=f"QRP{i % PATIENTS:05d}",
                           patient_name=f"QRBENCH^PATIENT{i % PATIENTS:05d}",
                           study_date=FIRST_DAY + dt.timedelta(days=i % DAYS), rows=8, columns=8)
        ds.save_as(folder / f"{i:06d}.dcm", enforce_file_format=True)


def storescu(port: int, called: str, folder: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["/usr/bin/storescu", "-aet", "BENCH", "-aec", called, "+sd", "+r", "127.0.0.1", str(port),
                    str(folder)], env={**os.environ, "TCP_NODELAY": "1"}, check=True, capture_output=True)
    return time.perf_counter() - t0


def find_queries(n: int, queries: int) -> list[tuple[str, str]]:
    """(PatientID or StudyDate, value) pairs, spread over the data set."""
    out = []
    for k in range(queries):
        out.append(("PatientID", f"QRP{(k * 37) % min(n, PATIENTS):05d}"))
        out.append(("StudyDate", (FIRST_DAY + dt.timedelta(days=(k * 53) % min(n, DAYS))).strftime("%Y%m%d")))
    return out


def _no_delay(event) -> None:
    """The client with Nagle off, as the servers (TCP_NODELAY=1): no 40 ms delayed-ACK stalls."""
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def c_find(port: int, called: str, key: str, value: str) -> tuple[float, int]:
    from pydicom.dataset import Dataset
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in ("StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "AccessionNumber",
                    "ModalitiesInStudy", "NumberOfStudyRelatedInstances"):
        setattr(ds, keyword, "")
    setattr(ds, key, value)
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    t0 = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title=called, evt_handlers=[(evt.EVT_CONN_OPEN, _no_delay)])
    assert assoc.is_established, f"{called}: association refused"
    matches = sum(1 for status, identifier in assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind)
                  if status and status.Status in (0xFF00, 0xFF01) and identifier is not None)
    assoc.release()
    return time.perf_counter() - t0, matches


def lean_c_find(port: int, called: str, key: str, value: str) -> tuple[float, int]:
    """The same query as :func:`c_find` from ``lean_find`` (no client library in the figure)."""
    from pydicom.dataset import Dataset

    from bench import lean_find

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in ("StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "AccessionNumber",
                    "ModalitiesInStudy", "NumberOfStudyRelatedInstances"):
        setattr(ds, keyword, "")
    setattr(ds, key, value)
    t0 = time.perf_counter()
    matches = lean_find.find("127.0.0.1", port, calling="BENCH", called=called,
                             sop_class="1.2.840.10008.5.1.4.1.2.2.1", identifier=ds)
    return time.perf_counter() - t0, matches


def qido(session, base: str, key: str, value: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    response = session.get(f"{base}/studies", params={key: value}, headers={"Accept": "application/dicom+json"},
                           timeout=60)
    elapsed = time.perf_counter() - t0
    assert response.status_code in (200, 204), (base, response.status_code, response.text[:300])
    return elapsed, len(response.json()) if response.status_code == 200 and response.content else 0


class LeanHttp:
    """A kept-alive ``http.client`` connection: the same QIDO-RS request as :func:`qido` without
    the ``requests`` library's own cost per request (a few milliseconds here, the same for every
    server), so that what the servers spend shows."""

    def __init__(self, base: str, headers: dict):
        parts = urlsplit(base)
        self.host, self.port, self.path = parts.hostname, parts.port, parts.path
        self.headers = {**headers, "Accept": "application/dicom+json"}
        self.connection = None

    def search(self, key: str, value: str) -> tuple[float, int]:
        import http.client
        from urllib.parse import urlencode

        t0 = time.perf_counter()
        if self.connection is None:
            self.connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        self.connection.request("GET", f"{self.path}/studies?{urlencode({key: value})}", headers=self.headers)
        response = self.connection.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - t0
        assert response.status in (200, 204), (self.path, response.status, body[:300])
        return elapsed, len(json.loads(body)) if response.status == 200 and body else 0


def _summary(name: str, kind: str, by_key: dict[str, list[float]], counts: list[int]) -> dict:
    return {"peer": name, "kind": kind, "counts": counts,
            **{f"{key}_p50_ms": pct(v, 0.5) for key, v in by_key.items()},
            **{f"{key}_p95_ms": pct(v, 0.95) for key, v in by_key.items()},
            "queries_per_s": round(len(counts) / sum(sum(v) for v in by_key.values()), 1)}


def measure(kind: str, engine_run, orthanc_run, queries) -> list[dict]:
    """Each search sent to both sides one after the other, the side that goes first alternating,
    so that a slow spell of this shared machine falls on both sides alike (not on one side's
    whole series, as when one side's searches all run before the other's)."""
    runs = {"engine": engine_run, "orthanc": orthanc_run}
    for run in runs.values():
        run(*queries[0])  # warm-up (connections, caches)
    by_key: dict[str, dict[str, list[float]]] = {name: {} for name in runs}
    counts: dict[str, list[int]] = {name: [] for name in runs}
    for n, (key, value) in enumerate(queries):
        for name in (("engine", "orthanc") if n % 2 == 0 else ("orthanc", "engine")):
            seconds, matches = runs[name](key, value)
            by_key[name].setdefault(key, []).append(seconds)
            counts[name].append(matches)
    return [_summary(name, kind, by_key[name], counts[name]) for name in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=10000)
    parser.add_argument("--queries", type=int, default=200, help="searches of each kind")
    args = parser.parse_args()

    import requests

    from tests.support.orthanc import OrthancProcess

    recreate_database()
    with tempfile.TemporaryDirectory(prefix="qr-bench-") as tmp:
        work = Path(tmp)
        manage(engine_env(work), "migrate", "--noinput")
        write_studies(args.studies, work / "studies")
        procs = []
        web = None
        try:
            dicom_port = free_port()
            env = engine_env(work)
            procs.append(subprocess.Popen([str(ROOT / ".venv/bin/python"), "manage.py", "run_dicom", "--host",
                                           "127.0.0.1", "--port", str(dicom_port), "--workers", "2"], cwd=ROOT, env=env,
                                          stdout=open(work / "dicom.log", "wb"), stderr=subprocess.STDOUT))
            web = Web(env, work / "web.log")
            wait_port(dicom_port, 90)
            orthanc = OrthancProcess(work / "orthanc", aet="ORTHANC", dicomweb=True, extra={
                "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
                "DicomModalities": {"bench": ["BENCH", "127.0.0.1", 104]}, "DicomAlwaysAllowFind": True})
            orthanc.start()
            loaded = {"engine": storescu(dicom_port, "PACS", work / "studies"),
                      "orthanc": storescu(orthanc.dicom_port, "ORTHANC", work / "studies")}
            engine_web = requests.Session()
            engine_web.headers["Authorization"] = f"Token {web.api_token('qrbench')}"
            orthanc_web = requests.Session()
            queries = find_queries(args.studies, args.queries)
            token = {"Authorization": engine_web.headers["Authorization"]}
            results = [
                *measure("C-FIND", lambda k, v: c_find(dicom_port, "PACS", k, v),
                         lambda k, v: c_find(orthanc.dicom_port, "ORTHANC", k, v), queries),
                *measure("C-FIND lean", lambda k, v: lean_c_find(dicom_port, "PACS", k, v),
                         lambda k, v: lean_c_find(orthanc.dicom_port, "ORTHANC", k, v), queries),
                *measure("QIDO-RS", lambda k, v: qido(engine_web, web.dicomweb, k, v),
                         lambda k, v: qido(orthanc_web, f"{orthanc.url}/dicom-web", k, v), queries),
                *measure("QIDO-RS lean", LeanHttp(web.dicomweb, token).search,
                         LeanHttp(f"{orthanc.url}/dicom-web", {}).search, queries),
            ]
            orthanc.stop()
        finally:
            if web is not None:
                web.stop()
            for proc in procs:
                proc.terminate()
                proc.wait(30)
    same = all(r["counts"] == results[0]["counts"] for r in results)
    print(f"\nStudy search, {args.studies} studies, {args.queries} searches of each kind; loaded in "
          f"{loaded['engine']:.0f} s (engine) / {loaded['orthanc']:.0f} s (Orthanc); same matches everywhere: {same}")
    print(f"{'service':12} {'peer':8} {'PatientID p50':>14} {'p95':>8} {'StudyDate p50':>14} {'p95':>8} {'q/s':>7}")
    for r in results:
        print(f"{r['kind']:12} {r['peer']:8} {r['PatientID_p50_ms']:14.2f} {r['PatientID_p95_ms']:8.2f} "
              f"{r['StudyDate_p50_ms']:14.2f} {r['StudyDate_p95_ms']:8.2f} {r['queries_per_s']:7.1f}")
    for kind in ("C-FIND", "C-FIND lean", "QIDO-RS", "QIDO-RS lean"):
        engine, peer = (r for r in results if r["kind"] == kind)
        print(f"{kind}: Orthanc p50 / engine p50 = "
              f"{peer['PatientID_p50_ms'] / engine['PatientID_p50_ms']:.1f} (PatientID), "
              f"{peer['StudyDate_p50_ms'] / engine['StudyDate_p50_ms']:.1f} (StudyDate)")
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    with open(out / "query_retrieve.jsonl", "a") as f:
        for r in results:
            f.write(json.dumps({**{k: v for k, v in r.items() if k != "counts"}, "studies": args.studies,
                                "same_matches": same, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
    if not same:
        sys.exit("the two sides answered different match counts")


if __name__ == "__main__":
    main()
