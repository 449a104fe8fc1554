"""C-STORE ingest and VNA routing benchmark, peers side by side in the same run.

Ingest: a 200-image CT study (512 x 512, 16-bit, ~105 MB) sent by dcmtk's
``/usr/bin/storescu`` (one association) into
  * the engine: ``manage.py run_dicom`` (stream to disk, fsync, rename, index commit before
    every Success),
  * dcmtk's ``/usr/bin/storescp`` (writes files, no fsync),
  * Orthanc with ``SyncStorageArea: true`` (fsyncs too).
Each run uses a fresh study (new UIDs); MB/s and instances/s per receiver, median of runs.

Routing (``--route``): the engine's transfer of the same study into Orthanc
(``pacs.services.routing.transfers.run_transfer``: one association, files streamed from disk, then
the storage commitment N-ACTION and the N-EVENT-REPORT) against ``storescu`` sending it
straight to the same Orthanc.  Target: >= 80 % of the direct throughput.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/pacs_h4_bench \\
        .venv/bin/python bench/store.py --images 200 --runs 3 --route

The database named by DATABASE_URL is created if missing and its image tables EMPTIED:
never point it at a real database.  ``--profile`` runs one engine ingest in-process under
cProfile (every thread) and prints where the time goes.

TLS (``--tls``): the same study, per run, sent by storescu in clear to the engine's DICOM_PORT
and with ``+tls`` (a client certificate of a test CA) to its DICOM_TLS_PORT, and the same pair
against two Orthancs, one in clear and one with DicomTlsEnabled (the TLS peer; Orthanc's DICOM
port is either one or the other).  Target: engine over TLS >= 80 % of the engine in clear.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/pacs_t1_bench \
        .venv/bin/python bench/store.py --images 200 --runs 3 --tls --no-ingest
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/pacs_h4_bench")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
os.environ["TCP_NODELAY"] = "1"
os.environ.setdefault("VNA_DESTINATIONS", "")

from bench.common import free_port, wait_port  # noqa: E402
from tests.support.orthanc import OrthancProcess, write_study  # noqa: E402

ENV = {**os.environ, "TCP_NODELAY": "1"}
PROFILE_ROUTE = False
PDU = 0  # Orthanc's MaximumPduLength for the routing bench (0: Orthanc's default, 16 KiB)


def ensure_database() -> None:
    import psycopg

    url = os.environ["DATABASE_URL"]
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=ENV, check=True)


def storescu(port: int, called: str, files: list[Path], extra: tuple[str, ...] = ()) -> float:
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/storescu", "-aet", "MODALITY", "-aec", called, *extra, "127.0.0.1", str(port),
                           *map(str, files)], env=ENV, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"storescu -> {called} failed: {proc.stderr[-1000:]}")
    return elapsed


class Engine:
    def __init__(self, workdir: Path, args: tuple[str, ...] = (), tls_env: dict | None = None):
        self.port = free_port()
        self.tls_port = free_port() if tls_env else 0
        self.storage = Path(tempfile.mkdtemp(prefix="engine-storage-", dir=workdir))
        self.env = {**ENV, "STORAGE_DIR": str(self.storage), "DICOM_PORT": str(self.port), "DICOM_AE_TITLE": "PACS",
                    "LOG_LEVEL": "WARNING", "DICOM_TLS_PORT": str(self.tls_port), **(tls_env or {})}
        self.process = subprocess.Popen([sys.executable, "manage.py", "run_dicom", "--host", "127.0.0.1", *args],
                                        cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        if self.tls_port:
            wait_port(self.tls_port)

    def stop(self):
        self.process.terminate()
        self.process.wait(10)


class StoreSCP:
    def __init__(self, workdir: Path):
        self.port = free_port()
        self.out = Path(tempfile.mkdtemp(prefix="storescp-out-", dir=workdir))
        self.process = subprocess.Popen(["/usr/bin/storescp", "-aet", "STORESCP", "-od", str(self.out),
                                         str(self.port)], env=ENV, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self):
        self.process.terminate()
        self.process.wait(10)


def reset_tables() -> None:
    from pacs.models import Instance, Series, Study, StudyLink, Transfer, TransferItem
    from worklist.models import ReadingItem

    ReadingItem.objects.all().delete()

    TransferItem.objects.all().delete()
    Transfer.objects.all().delete()
    StudyLink.objects.all().delete()
    Instance.objects.all().delete()
    Series.objects.all().delete()
    Study.objects.all().delete()


def make_study(directory: Path, images: int) -> tuple[list[Path], int]:
    from pydicom.uid import generate_uid

    files = write_study(directory, images, study_instance_uid=generate_uid(), rows=512, columns=512,
                        accession_number="", patient_id="BENCH", patient_name="BENCH^CT")
    return files, sum(f.stat().st_size for f in files)


def rate(size: int, n: int, seconds: float) -> dict:
    return {"seconds": round(seconds, 3), "MB_per_s": round(size / seconds / 1e6, 1),
            "instances_per_s": round(n / seconds, 1)}


def bench_ingest(workdir: Path, images: int, runs: int) -> dict:
    engine, scp = Engine(workdir), StoreSCP(workdir)
    orthanc = OrthancProcess(workdir / "orthanc-ingest", sync_storage=True, engine_port=engine.port).start()
    results: dict[str, list[dict]] = {"engine": [], "storescp": [], "orthanc": []}
    try:
        receivers = [("engine", engine.port, "PACS"), ("storescp", scp.port, "STORESCP"),
                     ("orthanc", orthanc.dicom_port, orthanc.aet)]
        for run in range(runs):
            files, size = make_study(workdir / f"study{run}", images)
            # Each receiver starts on a quiet disk (the study just written, and storescp's
            # unsynced output, would otherwise be flushed during the next receiver's run), and
            # the order turns each run so that no receiver is always first.
            for name, port, called in receivers[run % 3:] + receivers[:run % 3]:
                os.sync()
                results[name].append(rate(size, images, storescu(port, called, files)))
            shutil.rmtree(workdir / f"study{run}")
            shutil.rmtree(scp.out)
            scp.out.mkdir()
    finally:
        engine.stop()
        scp.stop()
        orthanc.stop()
    out = {name: median(rows) for name, rows in results.items()} | {"size_MB": round(size / 1e6, 1)}
    for name, rows in results.items():
        out[name]["each_MB_per_s"] = [r["MB_per_s"] for r in rows]
    # runs are paired (same study, same minute): the median of the per-run ratios
    out["engine_over_orthanc_per_run"] = [round(e["MB_per_s"] / o["MB_per_s"], 2)
                                          for e, o in zip(results["engine"], results["orthanc"], strict=True)]
    return out


def median(rows: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]} | {"runs": len(rows)}


def bench_tls(workdir: Path, images: int, runs: int) -> dict:
    """Per run, one study into four receivers: the engine in clear and over TLS, an Orthanc in
    clear and one with DICOM TLS; the order turns each run."""
    from tests.support.tls_certs import TestPKI

    pki = TestPKI(workdir / "pki")
    server = pki.issue("localhost", dns=["localhost"], ips=["127.0.0.1"])
    modality = pki.issue("MODALITY")
    client = ("+tls", str(modality.key), str(modality.cert), "+cf", str(pki.ca_file))
    engine = Engine(workdir, tls_env={"TLS_CERTIFICATE": str(server.chain), "TLS_PRIVATE_KEY": str(server.key),
                                      "TLS_CA_CERTIFICATES": str(pki.ca_file),
                                      "DICOM_TLS_CLIENT_CERTIFICATES": "required"})
    orthanc = OrthancProcess(workdir / "orthanc-clear", sync_storage=True, engine_port=engine.port).start()
    orthanc_tls = OrthancProcess(workdir / "orthanc-tls", sync_storage=True, engine_port=engine.port, extra={
        "DicomTlsEnabled": True, "DicomTlsCertificate": str(server.cert), "DicomTlsPrivateKey": str(server.key),
        "DicomTlsTrustedCertificates": str(pki.ca_file), "DicomTlsRemoteCertificateRequired": True}).start()
    receivers = [("engine_clear", engine.port, "PACS", ()), ("engine_tls", engine.tls_port, "PACS", client),
                 ("orthanc_clear", orthanc.dicom_port, orthanc.aet, ()),
                 ("orthanc_tls", orthanc_tls.dicom_port, orthanc_tls.aet, client)]
    results: dict[str, list[dict]] = {name: [] for name, *_ in receivers}
    try:
        for run in range(runs):
            files, size = make_study(workdir / f"tstudy{run}", images)
            for name, port, called, extra in receivers[run % 4:] + receivers[:run % 4]:
                os.sync()
                results[name].append(rate(size, images, storescu(port, called, files, extra)))
            shutil.rmtree(workdir / f"tstudy{run}")
    finally:
        engine.stop()
        orthanc.stop()
        orthanc_tls.stop()
    out: dict = {name: median(rows) | {"each_MB_per_s": [r["MB_per_s"] for r in rows]}
                 for name, rows in results.items()}
    out["size_MB"] = round(size / 1e6, 1)
    for peer in ("engine", "orthanc"):  # paired runs: the median of the per-run ratios
        ratios = [round(t["MB_per_s"] / c["MB_per_s"], 2)
                  for t, c in zip(results[f"{peer}_tls"], results[f"{peer}_clear"], strict=True)]
        out[f"{peer}_tls_over_clear_per_run"] = ratios
        out[f"{peer}_tls_over_clear"] = statistics.median(ratios)
    return out


def bench_route(workdir: Path, images: int, runs: int) -> dict:
    """Per run: storescu -> Orthanc directly, then the engine's transfer with each sender."""
    import django

    django.setup()
    from django.conf import settings
    from django.utils import timezone

    from pacs.models import Study, Transfer, VnaDestination
    from pacs.services import completion

    engine = Engine(workdir)
    settings.STORAGE_DIR = engine.storage
    orthanc = OrthancProcess(workdir / "orthanc-route", sync_storage=True, engine_port=engine.port,
                             extra={"MaximumPduLength": PDU} if PDU else None).start()
    VnaDestination.objects.all().delete()
    VnaDestination.objects.create(name="bench-orthanc", ae_title=orthanc.aet, host="127.0.0.1",
                                  port=orthanc.dicom_port)
    senders = ("engine", "dcmtk")
    direct: list[dict] = []
    sent: dict[str, list[dict]] = {s: [] for s in senders}
    committed: dict[str, list[dict]] = {s: [] for s in senders}
    try:
        for run in range(runs):
            files, size = make_study(workdir / f"rstudy{run}", images)
            os.sync()  # as for ingest: no writeback of the study just written during the transfer
            direct.append(rate(size, images, storescu(orthanc.dicom_port, orthanc.aet, files)))
            shutil.rmtree(workdir / f"rstudy{run}")
            for sender in senders:
                settings.VNA_DICOM_SENDER = sender
                folder = workdir / f"rstudy{run}{sender}"
                rp, files, size = ordered_study(folder, images)
                storescu(engine.port, "PACS", files)
                shutil.rmtree(folder)
                study = Study.objects.get(study_instance_uid=rp.study_instance_uid)
                assert study.requested_procedure_id == rp.pk and not study.corrections, study.corrections
                assert completion.check_study(study.pk, now=timezone.now() + timezone.timedelta(hours=1))
                transfer = Transfer.objects.get(study=study)
                seconds_sent, seconds_done = timed_transfer(transfer.pk,
                                                            PROFILE_ROUTE and run == 0 and sender == "engine")
                sent[sender].append(rate(size, images, seconds_sent))
                committed[sender].append(rate(size, images, seconds_done))
    finally:
        engine.stop()
        orthanc.stop()
    d = median(direct)
    out: dict = {"direct_storescu_to_orthanc": d, "orthanc_max_pdu": PDU or 16384}
    for sender in senders:
        r, c = median(sent[sender]), median(committed[sender])
        out[f"engine_{sender}_sent"] = r
        out[f"engine_{sender}_committed"] = c
        out[f"ratio_{sender}_sent"] = round(r["MB_per_s"] / d["MB_per_s"], 2)
        out[f"ratio_{sender}_committed"] = round(c["MB_per_s"] / d["MB_per_s"], 2)
    return out


def ordered_study(folder: Path, images: int):
    """An order (``_bench_order``) and its study written to ``folder``: (procedure, files, bytes)."""
    rp = _bench_order()
    files = write_study(folder, images, study_instance_uid=rp.study_instance_uid, rows=512, columns=512,
                        accession_number=rp.accession_number, patient_id="BENCH", issuer_of_patient_id="BENCH",
                        patient_name="BENCH^CT")
    return rp, files, sum(f.stat().st_size for f in files)


def timed_transfer(transfer_id: int, profile: bool = False) -> tuple[float, float]:
    """Seconds until the transfer task has sent every instance, and until it is committed."""
    from pacs.models import Transfer
    from pacs.models import transfers as tr
    from pacs.services.routing import transfers

    os.sync()
    start = time.perf_counter()
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        status = profiler.runcall(transfers.run_transfer, transfer_id)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    else:
        status = transfers.run_transfer(transfer_id)
    seconds_sent = time.perf_counter() - start
    while Transfer.objects.get(pk=transfer_id).status == tr.COMMITTING:
        time.sleep(0.01)
    seconds_done = time.perf_counter() - start
    final = Transfer.objects.get(pk=transfer_id)
    assert final.status == tr.COMMITTED, (status, final.reason)
    return seconds_sent, seconds_done


def _bench_order():
    """An order for the routed study, matched by accession number (the usual case: no corrections)."""
    from django.utils import timezone
    from pydicom.uid import generate_uid

    from ris.models import Order, Patient, PatientIdentifier, RequestedProcedure, ScheduledProcedureStep
    from ris.services.identifiers import new_accession_number

    identifier = PatientIdentifier.objects.filter(id_number="BENCH", assigning_authority="BENCH").first()
    if identifier is None:
        patient = Patient.objects.create(patient_name="BENCH^CT")
        PatientIdentifier.objects.create(patient=patient, id_number="BENCH", assigning_authority="BENCH")
    else:
        patient = identifier.patient
    order = Order.objects.create(patient=patient)
    accession = new_accession_number()
    rp = RequestedProcedure.objects.create(order=order, requested_procedure_id=accession, accession_number=accession,
                                           study_instance_uid=generate_uid())
    ScheduledProcedureStep.objects.create(requested_procedure=rp, scheduled_procedure_step_id=accession,
                                          modality="CT", scheduled_start=timezone.now())
    return rp


def profile_ingest(workdir: Path, images: int) -> None:
    """One ingest into an in-process AE with every thread profiled (cProfile + threading.setprofile)."""
    import cProfile
    import pstats
    import threading

    import django

    django.setup()
    from django.conf import settings

    from pacs.dimse.server import start_server

    settings.STORAGE_DIR = workdir / "profile-storage"
    settings.STORAGE_DIR.mkdir()
    profiles = []

    def per_thread(*args):
        p = cProfile.Profile()
        profiles.append(p)
        sys.setprofile(None)
        p.enable()

    threading.setprofile(per_thread)
    server = start_server("127.0.0.1", 0)
    files, size = make_study(workdir / "pstudy", images)
    seconds = storescu(server.server_address[1], "PACS", files)
    server.shutdown()
    threading.setprofile(None)
    for p in profiles:
        p.disable()
    stats = pstats.Stats(*profiles) if profiles else None
    print(f"profiled ingest: {rate(size, images, seconds)}")
    if stats:
        stats.sort_stats("tottime").print_stats(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--route", action="store_true", help="also measure routing into Orthanc")
    parser.add_argument("--profile", action="store_true", help="profile one in-process engine ingest")
    parser.add_argument("--orthanc-pdu", type=int, default=0,
                        help="Orthanc MaximumPduLength in the routing bench (default: Orthanc's 16384)")
    parser.add_argument("--tls", action="store_true",
                        help="also measure C-STORE over TLS against clear, engine and Orthanc side by side")
    parser.add_argument("--ingest", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--json", help="append the results as one JSON line to this file")
    args = parser.parse_args()
    global PDU, PROFILE_ROUTE
    PDU = args.orthanc_pdu
    PROFILE_ROUTE = args.profile and args.route
    ensure_database()
    import django

    django.setup()
    reset_tables()
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        workdir = Path(tmp)
        if args.profile and not args.route:
            profile_ingest(workdir, args.images)
            return
        result = {"images": args.images}
        if args.ingest:
            result["ingest"] = bench_ingest(workdir, args.images, args.runs)
        if args.route:
            result["route"] = bench_route(workdir, args.images, args.runs)
        if args.tls:
            result["tls"] = bench_tls(workdir, args.images, args.runs)
    reset_tables()
    if args.ingest:
        ingest = result["ingest"]
        print(f"C-STORE of {args.images} CT images ({ingest['size_MB']} MB), median of {args.runs} runs:")
        for name in ("engine", "storescp", "orthanc"):
            r = ingest[name]
            print(f"  {name:9s} {r['MB_per_s']:8.1f} MB/s {r['instances_per_s']:8.1f} instances/s ({r['seconds']} s)")
        print(f"  engine / orthanc = {ingest['engine']['MB_per_s'] / ingest['orthanc']['MB_per_s']:.2f} (medians); "
              f"per run {ingest['engine_over_orthanc_per_run']}, "
              f"median {statistics.median(ingest['engine_over_orthanc_per_run']):.2f}")
    if args.route:
        route = result["route"]
        print(f"Routing {args.images} CT images into Orthanc (MaximumPduLength {PDU or 16384}), median of {args.runs}:")
        for name, r in route.items():
            if isinstance(r, dict):
                print(f"  {name:34s} {r['MB_per_s']:8.1f} MB/s {r['instances_per_s']:8.1f} instances/s")
        for sender in ("engine", "dcmtk"):
            print(f"  routed ({sender}) / direct = {route[f'ratio_{sender}_sent']} (sent), "
                  f"{route[f'ratio_{sender}_committed']} (committed)")
    if args.tls:
        over = result["tls"]
        print(f"C-STORE of {args.images} CT images ({over['size_MB']} MB) in clear and over TLS, median of {args.runs}:")
        for name in ("engine_clear", "engine_tls", "orthanc_clear", "orthanc_tls"):
            r = over[name]
            print(f"  {name:13s} {r['MB_per_s']:8.1f} MB/s {r['instances_per_s']:8.1f} instances/s ({r['seconds']} s)")
        for peer in ("engine", "orthanc"):
            print(f"  {peer} TLS / clear = {over[f'{peer}_tls_over_clear']:.2f} "
                  f"(per run {over[f'{peer}_tls_over_clear_per_run']})")
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
