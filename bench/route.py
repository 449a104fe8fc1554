"""VNA routing benchmark only: ``bench/store.py --no-ingest --route`` (see its docstring).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/pacs_h4_bench \\
        .venv/bin/python bench/route.py --images 200 --runs 3 [--orthanc-pdu 131072]

Per run, the same Orthanc (SyncStorageArea true) receives the 200-image CT study from
``/usr/bin/storescu`` directly, then from the engine's transfer task with each sender
(``VNA_DICOM_SENDER`` engine and dcmtk): MB/s when every instance is sent, and when the
storage commitment report has been recorded.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "--no-ingest", "--route", *sys.argv[1:]]
    runpy.run_path(str(Path(__file__).with_name("store.py")), run_name="__main__")
