"""The outbox with every message kind on: exams complete and reports final, through a real Celery
worker to MLLP sinks that ACK at once (target: at least 200 exams/s complete).

Two destinations, as a site that turns everything on has them:

* ``ehr`` (HL7 v2.3.1): results (ORU^R01) and order status (ORM^O01 ORC-1 SC, IHE RAD-3);
* ``billing`` (HL7 v2.5.1): results and charges (DFT^P03, IHE RAD-35).

Phases, each timed from the commit of one transaction holding N changes to the last of their
rows DELIVERED in PostgreSQL (then checked: every row delivered, every MSH-10 received once):

* ``exams complete``: per exam, the requested procedure moves to IN_PROGRESS (ORM^O01 ORC-5 IP)
  and its study is completed by ``pacs.services.completion.complete_study``, the code the MPPS
  COMPLETED and the quiet-period sweep run (ORM^O01 ORC-5 CM and the technical DFT^P03):
  3 messages per exam;
* ``reports final``: per exam, the final report signed by ``ris.services.reports.sign`` (two
  ORU^R01, ORM^O01 CM with OBR-25 F, the professional DFT^P03): 4 messages per exam.

    .venv/bin/python bench/outbox_kinds.py --n 1000 --concurrency 2

The ORU-only figure to compare with is ``bench/oru_delivery.py`` (same worker, same sink), run in
the same session.  Environment: BENCH_DATABASE_URL (default
postgres://postgres@127.0.0.1:5432/pacs_outbox_bench; dropped and re-created), CELERY_BROKER_URL
(default redis://127.0.0.1:6379/5; emptied).  JSON lines in bench/out/outbox_kinds.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/pacs_outbox_bench")

from bench.oru_delivery import BROKER, Worker, make_studies, recreate_database  # noqa: E402

PER_EXAM = {"exams complete": 3, "reports final": 4}


def make_exam_studies(rps) -> list:
    """The study each exam's images made (receiving, matched to its procedure, no instances)."""
    from django.utils import timezone

    from pacs.models import Study

    now = timezone.now()
    return [Study.objects.create(study_instance_uid=rp.study_instance_uid, accession_number=rp.accession_number,
                                 patient_id=f"B{rp.pk}", requested_procedure=rp, last_received_at=now)
            for rp in rps]


def complete_exams(rps, studies) -> None:
    from django.utils import timezone

    from pacs.services.completion import complete_study
    from ris.services.transitions import transition

    now = timezone.now()
    for rp, study in zip(rps, studies, strict=True):
        transition(rp, "IN_PROGRESS", entity="requested_procedure", cause="MPPS IN PROGRESS", actor="bench")
        complete_study(study, cause="MPPS COMPLETED and every listed instance stored", now=now)


def sign_reports(rps, user) -> None:
    from ris.services.reports import sign

    for rp in rps:
        sign(rp.pk, user, "FINAL", findings="No acute intracranial abnormality.", impression="Normal CT head.")


def timed_phase(name: str, change, n: int, sinks, deadline_s: float) -> dict:
    """``change()`` in one transaction; seconds from its commit to the last row DELIVERED."""
    from django.db import transaction
    from django.db.models import Count, Max

    from hl7gateway.models import OutboundMessage

    before = {k: s.count for k, s in sinks.items()}
    first_id = (OutboundMessage.objects.aggregate(m=Max("id"))["m"] or 0) + 1
    with transaction.atomic():
        change()
        t0_wall = time.time()
    rows = OutboundMessage.objects.filter(id__gte=first_id)
    total = rows.count()
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and rows.filter(status="DELIVERED").count() < total:
        time.sleep(0.05)
    last = rows.aggregate(m=Max("delivered_at"))["m"]
    delivered = rows.filter(status="DELIVERED").count()
    elapsed = last.timestamp() - t0_wall if last else float("nan")
    received = [cid for k, s in sinks.items() for cid in s.control_ids()[before[k]:]]
    kinds = dict(rows.values_list("kind").annotate(c=Count("id")))
    return {"phase": name, "exams": n, "messages": total, "expected": n * PER_EXAM[name], "by_kind": kinds,
            "delivered": delivered, "exactly_once": len(received) == total and len(set(received)) == total,
            "seconds": round(elapsed, 3), "exams_per_s": round(n / elapsed, 1),
            "messages_per_s": round(total / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="exams per run")
    parser.add_argument("--concurrency", default="2", help="worker pool sizes to run, comma-separated")
    parser.add_argument("--loglevel", default="INFO", help="worker log level (INFO as in the Procfile)")
    args = parser.parse_args()

    recreate_database()
    import django

    django.setup()
    import redis
    from django.contrib.auth.models import Group, User
    from django.core.management import call_command

    from hl7gateway.models import OutboundDestination
    from tests.support.mllp_sink import MLLPSink

    call_command("migrate", verbosity=0)
    sinks = {"ehr": MLLPSink(record_payloads=False).start(), "billing": MLLPSink(record_payloads=False).start()}
    OutboundDestination.objects.create(name="ehr", host="127.0.0.1", port=sinks["ehr"].port, hl7_version="2.3.1",
                                       sends_order_status=True)
    OutboundDestination.objects.create(name="billing", host="127.0.0.1", port=sinks["billing"].port,
                                       hl7_version="2.5.1", sends_charges=True)
    user = User.objects.create_user("benchrad", first_name="Bench", last_name="Radiologist")
    user.groups.add(Group.objects.get(name="radiologist"))

    results = []
    with tempfile.TemporaryDirectory(prefix="outbox-bench-") as tmp:
        for c in [int(x) for x in args.concurrency.split(",") if x]:
            redis.Redis.from_url(BROKER).flushdb()
            rps = make_studies(args.n, user)
            studies = make_exam_studies(rps)
            worker = Worker(c, Path(tmp), args.loglevel)
            worker.start()
            try:
                phases = (("exams complete", lambda rps=rps, studies=studies: complete_exams(rps, studies)),
                          ("reports final", lambda rps=rps: sign_reports(rps, user)))
                for name, change in phases:
                    result = {**timed_phase(name, change, args.n, sinks, max(120.0, args.n / 5)), "concurrency": c}
                    results.append(result)
                    print(json.dumps(result), flush=True)
            finally:
                worker.stop()
    for sink in sinks.values():
        sink.down()

    print()
    print(f"Outbox, every kind on: {args.n} exams; sinks ACK at once (AA)")
    print(f"{'phase':32} {'messages':>9} {'msg/s':>8} {'exams/s':>8} {'exactly once':>13}")
    for r in results:
        name = f"{r['phase']} (worker -c {r['concurrency']})"
        print(f"{name:32} {r['messages']:9d} {r['messages_per_s']:8.0f} {r['exams_per_s']:8.0f} "
              f"{str(r['exactly_once'] and r['messages'] == r['expected']):>13}")
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    with open(out / "outbox_kinds.jsonl", "a") as f:
        for r in results:
            f.write(json.dumps({**r, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")


if __name__ == "__main__":
    main()
