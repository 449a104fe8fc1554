"""VNA routing benchmark.

In clear only, ``bench/store.py --no-ingest --route`` (see its docstring):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/pacs_h4_bench \\
        .venv/bin/python bench/route.py --images 200 --runs 3 [--orthanc-pdu 131072]

Per run, the same Orthanc (SyncStorageArea true) receives the 200-image CT study from
``/usr/bin/storescu`` directly, then from the engine's transfer task with each sender
(``VNA_DICOM_SENDER`` engine and dcmtk): MB/s when every instance is sent, and when the
storage commitment report has been recorded.

Over TLS (``--tls``), side by side in one run: two Orthancs (SyncStorageArea true), one clear, one
with DICOM TLS (PS3.15 B.9; the VNA asks for the engine's certificate); per run the study goes
  * from ``storescu`` to each (``+tls`` to the second): the TLS peer's ratio,
  * from the engine's transfer task, with each sender, to ``dicom://`` and ``dicoms://``.
Target: each sender over TLS >= 0.8 of the same sender in clear.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/pacs_h4_bench \\
        .venv/bin/python bench/route.py --tls --images 200 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SENDERS = ("engine", "dcmtk")


def storescu_tls(store, port: int, called: str, files: list[Path], tls_args: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/storescu", *tls_args, "-aet", "MODALITY", "-aec", called, "127.0.0.1",
                           str(port), *map(str, files)], env=store.ENV, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"storescu +tls -> {called} failed: {proc.stderr[-1000:]}")
    return elapsed


def route_once(store, engine, destination, sender: str, workdir: Path, images: int) -> tuple[dict, dict]:
    """Ingest a fresh study into the engine, then time its transfer to ``destination``."""
    from django.conf import settings
    from django.utils import timezone

    from pacs.models import Study, Transfer, VnaDestination
    from pacs.services import completion

    settings.VNA_DICOM_SENDER = sender
    VnaDestination.objects.exclude(pk=destination.pk).update(enabled=False)
    VnaDestination.objects.filter(pk=destination.pk).update(enabled=True)
    rp = store._bench_order()
    folder = workdir / f"tstudy-{rp.pk}"
    files = store.write_study(folder, images, study_instance_uid=rp.study_instance_uid, rows=512, columns=512,
                              accession_number=rp.accession_number, patient_id="BENCH",
                              issuer_of_patient_id="BENCH", patient_name="BENCH^CT")
    size = sum(f.stat().st_size for f in files)
    store.storescu(engine.port, "PACS", files)
    shutil.rmtree(folder)
    study = Study.objects.get(study_instance_uid=rp.study_instance_uid)
    assert completion.check_study(study.pk, now=timezone.now() + timezone.timedelta(hours=1))
    transfer = Transfer.objects.get(study=study)
    assert transfer.destination_id == destination.pk
    seconds_sent, seconds_done = store.timed_transfer(transfer.pk)
    return store.rate(size, images, seconds_sent), store.rate(size, images, seconds_done)


def bench_tls(store, workdir: Path, images: int, runs: int) -> dict:
    import django

    django.setup()
    from django.conf import settings

    from pacs import scu_dcmtk
    from pacs.models import VnaDestination
    from tests.support.orthanc import OrthancProcess, OrthancTLS
    from tests.support.tls_certs import TestPKI

    pki = TestPKI(workdir / "pki")
    own = pki.issue("PACS", dns=["localhost"], ips=["127.0.0.1"])
    vna_cert = pki.issue("vna", dns=["localhost"], ips=["127.0.0.1"])
    settings.TLS_CERTIFICATE, settings.TLS_PRIVATE_KEY = str(own.chain), str(own.key)
    settings.TLS_CA_CERTIFICATES = str(pki.ca_file)
    engine = store.Engine(workdir)
    settings.STORAGE_DIR = engine.storage
    clear = OrthancProcess(workdir / "orthanc-clear", sync_storage=True, engine_port=engine.port).start()
    secure = OrthancProcess(workdir / "orthanc-tls", sync_storage=True, engine_port=engine.port,
                            tls=OrthancTLS(vna_cert.cert, vna_cert.key, pki.ca_file,
                                           remote_certificate_required=True)).start()
    VnaDestination.objects.all().delete()
    destinations = {
        "clear": VnaDestination.objects.create(name="bench-clear", ae_title=clear.aet, host="127.0.0.1",
                                               port=clear.dicom_port),
        "tls": VnaDestination.objects.create(name="bench-tls", ae_title=secure.aet, host="127.0.0.1",
                                             port=secure.dicom_port, tls=True),
    }
    rows: dict[str, list[dict]] = {}
    try:
        for run in range(runs):
            files, size = store.make_study(workdir / f"direct{run}", images)
            os.sync()
            rows.setdefault("storescu_clear", []).append(
                store.rate(size, images, store.storescu(clear.dicom_port, clear.aet, files)))
            rows.setdefault("storescu_tls", []).append(store.rate(size, images, storescu_tls(
                store, secure.dicom_port, secure.aet, files, scu_dcmtk.tls_arguments())))
            shutil.rmtree(workdir / f"direct{run}")
            for sender in SENDERS:
                for mode in ("clear", "tls"):
                    sent, done = route_once(store, engine, destinations[mode], sender, workdir, images)
                    rows.setdefault(f"{sender}_{mode}_sent", []).append(sent)
                    rows.setdefault(f"{sender}_{mode}_committed", []).append(done)
    finally:
        engine.stop()
        clear.stop()
        secure.stop()
    out: dict = {name: store.median(r) for name, r in rows.items()}
    mb = {name: r["MB_per_s"] for name, r in out.items()}
    out["ratio_storescu_tls"] = round(mb["storescu_tls"] / mb["storescu_clear"], 2)
    for sender in SENDERS:
        for phase in ("sent", "committed"):
            out[f"ratio_{sender}_tls_{phase}"] = round(mb[f"{sender}_tls_{phase}"] / mb[f"{sender}_clear_{phase}"], 2)
    return out


def main_tls() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", help="append the results as one JSON line to this file")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    import store

    store.ensure_database()
    import django

    django.setup()
    store.reset_tables()
    with tempfile.TemporaryDirectory(prefix="bench-route-tls-") as tmp:
        result = bench_tls(store, Path(tmp), args.images, args.runs)
    store.reset_tables()
    print(f"Routing {args.images} CT images into Orthanc, clear and DICOM TLS side by side, median of {args.runs}:")
    for name, r in result.items():
        if isinstance(r, dict):
            print(f"  {name:26s} {r['MB_per_s']:8.1f} MB/s {r['instances_per_s']:8.1f} instances/s")
    for name, r in result.items():
        if name.startswith("ratio_"):
            print(f"  {name[6:]:26s} TLS / clear = {r}")
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps({"images": args.images, "route_tls": result}) + "\n")


if __name__ == "__main__":
    if "--tls" in sys.argv:
        main_tls()
    else:
        sys.argv = [sys.argv[0], "--no-ingest", "--route", *sys.argv[1:]]
        runpy.run_path(str(HERE / "store.py"), run_name="__main__")
