"""``make drills``: the long crash and outage drill, its figures appended to bench/RESULTS.md.

    python -m tests.drills.run --seed 7 --kills mllp=1000,dicom=200,worker=100 \\
        --outages postgres,redis,vna,ehr-down,billing-ae --outage-seconds 60

Every option has an environment variable (DRILL_SEED, DRILL_KILLS, DRILL_KILL_GAP, DRILL_OUTAGES,
DRILL_OUTAGE_SECONDS, DRILL_SENDERS, DRILL_MINIMUM, DRILL_STUDIES, DRILL_IMAGES, DRILL_REPORTS,
DRILL_SPREAD, DRILL_WORKDIR).  Exits 1 when a promise was broken (a must-be-zero column is not zero) or the
drill could not finish.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

from tests.support.drills.drill import OUTAGES, DrillConfig, remove, results_section, run  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
HEADING = "## Crash and outage drills"


def kills(text: str) -> dict[str, int]:
    out = {}
    for part in filter(None, text.split(",")):
        kind, _, n = part.partition("=")
        out[kind.strip()] = int(n)
    return out


def gap(text: str) -> tuple[float, float]:
    least, _, most = text.partition(",")
    return float(least), float(most or least)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    e = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=int(e("DRILL_SEED", "20260301")))
    p.add_argument("--kills", type=kills, default=kills(e("DRILL_KILLS", "mllp=1000,dicom=200,worker=100,web=20,beat=10")),
                   help="process kind=count of kill -9, comma-separated")
    p.add_argument("--outages", default=e("DRILL_OUTAGES", ",".join(OUTAGES)),
                   help=f"comma-separated, of {', '.join(OUTAGES)}")
    p.add_argument("--kill-gap", type=gap, default=gap(e("DRILL_KILL_GAP", "0.5,3")),
                   help="seconds between a kind being ready again and its next kill: least,most")
    p.add_argument("--outage-seconds", type=float, default=float(e("DRILL_OUTAGE_SECONDS", "60")))
    p.add_argument("--senders", type=int, default=int(e("DRILL_SENDERS", "2")))
    p.add_argument("--minimum", type=int, default=int(e("DRILL_MINIMUM", "50")), help="HL7 messages per sender, at least")
    p.add_argument("--studies", type=int, default=int(e("DRILL_STUDIES", "200")))
    p.add_argument("--images", type=int, default=int(e("DRILL_IMAGES", "4")))
    p.add_argument("--reports", type=int, default=int(e("DRILL_REPORTS", "200")))
    p.add_argument("--spread", action=argparse.BooleanOptionalAction, default=e("DRILL_SPREAD", "1") not in ("", "0"),
                   help="pace the exams and the reports over the kill phase, so that every outage meets them "
                        "(default; --no-spread: as fast as they are answered)")
    p.add_argument("--title", default=e("DRILL_TITLE", "Long drill"))
    p.add_argument("--workdir", default=e("DRILL_WORKDIR", ""))
    p.add_argument("--no-results", action="store_true", help="print the table only")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="drill-"))
    config = DrillConfig(seed=args.seed, workdir=workdir, kills=args.kills, kill_gap=args.kill_gap, spread=args.spread,
                         outages=tuple(o for o in args.outages.split(",") if o), outage_seconds=args.outage_seconds,
                         hl7_senders=args.senders, hl7_minimum=args.minimum, dicom_studies=args.studies,
                         dicom_images=args.images, reports=args.reports, drain_timeout=900)
    result = run(config)
    command = f"python -m tests.drills.run {config.command()}"
    section = results_section(result, f"{args.title} ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)", command)
    print(section)
    if not args.no_results:
        text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
        if HEADING not in text:
            text = text.rstrip("\n") + f"\n\n{HEADING}\n\nWritten by `make drills` (tests/drills/run.py).\n"
        RESULTS.write_text(text.rstrip("\n") + "\n\n" + section)
    broken = result.tally.losses()
    if broken or result.errors:
        print(f"BROKEN PROMISES: {broken}" if broken else "", "\n".join(result.errors), sep="\n", file=sys.stderr)
        print(f"logs kept in {workdir}", file=sys.stderr)
        return 1
    if not args.workdir:
        remove(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
