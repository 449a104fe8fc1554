"""QIDO-RS matching on SQLite (the embedded default): the one query of
``pacs.services.index_query`` (wildcards, case-insensitive names, ranges, UID lists, modality
subqueries, counts) in a real SQLite database made by ``migrate``."""

from __future__ import annotations

import pytest

from tests.support.sqlite import SqliteEngine

SCRIPT = r'''
import datetime as dt

from django.db import connection
from django.utils import timezone

from pacs.models import Instance, Series, Study
from pacs.services import index_query as iq

assert connection.vendor == "sqlite", connection.vendor
for n, (pid, name, date, modality) in enumerate([("SQ1", "TESTPERSON^ANNA", dt.date(2026, 3, 10), "CT"),
                                                 ("SQ2", "EXAMPLE^BRUNO", dt.date(2026, 3, 12), "MR")]):
    study = Study.objects.create(study_instance_uid=f"1.2.3.{n}", patient_id=pid, patient_name=name,
                                 study_date=date, study_time="101500", last_received_at=timezone.now())
    series = Series.objects.create(study=study, series_instance_uid=f"1.2.4.{n}", modality=modality, series_number=1)
    for i in range(2):
        Instance.objects.create(study=study, series=series, sop_instance_uid=f"1.2.5.{n}.{i}", sop_class_uid="1.2",
                                transfer_syntax_uid="1.2.840.10008.1.2.1", instance_number=i + 1, path="x", size=1,
                                received_at=timezone.now())


def uids(level=iq.STUDY, **keys):
    return sorted(r["StudyInstanceUID"] for r in iq.search(iq.Query(level=level, keys=keys, limit=10)).rows)


assert uids() == ["1.2.3.0", "1.2.3.1"]
assert uids(PatientID="SQ?") == ["1.2.3.0", "1.2.3.1"]
assert uids(PatientName="testperson*") == ["1.2.3.0"]
assert uids(StudyDate="20260311-") == ["1.2.3.1"]
assert uids(StudyDate="20260310-20260312", StudyTime="-110000") == ["1.2.3.0", "1.2.3.1"]
assert uids(ModalitiesInStudy="MR") == ["1.2.3.1"]
assert uids(StudyInstanceUID="1.2.3.1,1.2.3.9") == ["1.2.3.1"]
assert uids(iq.SERIES, Modality="C*") == ["1.2.3.0"]
[row] = iq.search(iq.Query(level=iq.STUDY, keys={"PatientID": "SQ1"})).rows
assert (row["NumberOfStudyRelatedSeries"], row["NumberOfStudyRelatedInstances"]) == (1, 2), row
print("sqlite qido ok")
'''


@pytest.mark.socket  # the engine's own process (manage.py)
def test_qido_matching_on_sqlite(tmp_path):
    SqliteEngine(tmp_path, "qido.sqlite3").run_script(SCRIPT, "sqlite qido ok")
