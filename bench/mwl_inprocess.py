"""The engine's own part of an MWL C-FIND, in process: the query (``pacs.dimse.mwl.find``) and the
answers encoded (``ItemEncoder``), without sockets or a client, on a database that ``bench/mwl.py``
filled. For comparing two trees (a worktree of an earlier commit and the checkout) where the
network benchmark's spread hides a few per cent.

    cd ../before && DATABASE_URL=... ../main/.venv/bin/python ../main/bench/mwl_inprocess.py --queries 600
    cd ../main && DATABASE_URL=... .venv/bin/python bench/mwl_inprocess.py --queries 600

Prints the CPU and wall time per modality + day query and the bytes of the answers (the same
bytes on both sides mean the same answers).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import sys
import time
from datetime import timedelta
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=".", help="the tree to measure (default: the current folder)")
    parser.add_argument("--queries", type=int, default=600)
    args = parser.parse_args()
    root = Path(args.root).resolve()
    sys.path.insert(0, str(root))
    os.environ.setdefault("SECRET_KEY", "bench-only")
    # An earlier tree kept its settings in the imaging app.
    settings = "project.settings" if (root / "project" / "settings.py").exists() else "pacs.settings"
    os.environ["DJANGO_SETTINGS_MODULE"] = settings
    import django

    django.setup()
    spec = importlib.util.spec_from_file_location("bench_mwl", root / "bench" / "mwl.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from pydicom.uid import ImplicitVRLittleEndian

    from pacs.dimse.mwl import ItemEncoder, find

    rng = random.Random(1)
    queries = [bench.query_dataset("modality_day", (rng.choice(bench.MODALITIES),
                                                    (bench.FIRST_DAY + timedelta(days=rng.randrange(10))).strftime("%Y%m%d")))
               for _ in range(args.queries)]
    for query in queries[:20]:  # warm: connection, prepared statements
        find(query, calling_ae_title="BENCH")
    cpu, wall, size = time.process_time(), time.perf_counter(), 0
    for query in queries:
        matches, rows = find(query, calling_ae_title="BENCH")
        encoder = ItemEncoder.for_query(matches, ImplicitVRLittleEndian)
        size += sum(len(encoder.encode(row)) for row in rows)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{root.name}: CPU {1000 * cpu / args.queries:.3f} ms/query, wall {1000 * wall / args.queries:.3f} ms/query, "
          f"answers {size} bytes")


if __name__ == "__main__":
    main()
