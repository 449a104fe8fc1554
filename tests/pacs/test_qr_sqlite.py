"""Query/Retrieve C-FIND's one SQL query on SQLite (the embedded default), as on PostgreSQL: the
patient level's grouping, the correlated counts, ModalitiesInStudy's LIKE with its escape, ranges
on dates kept as text, and the instances a retrieval names (PS3.4 C.2.2.2, C.6)."""

from __future__ import annotations

import pytest

from tests.support.sqlite import SqliteEngine

pytestmark = pytest.mark.socket  # starts manage.py processes

SCRIPT = r'''
import datetime as dt
from django.utils import timezone
from pydicom.dataset import Dataset
from pacs.dimse import qr
from pacs.dimse.matching import IdentifierError
from pacs.models import Instance, Series, Study

now = timezone.now()

def study(uid, pid, name, date, modalities, birth):
    return Study.objects.create(study_instance_uid=uid, patient_id=pid, issuer_of_patient_id="HOSP",
                                patient_name=name, patient_birth_date=birth, study_date=date, study_time="101500",
                                modalities_in_study=modalities, last_received_at=now)

def series(st, uid, modality, number, count):
    se = Series.objects.create(study=st, series_instance_uid=uid, modality=modality, series_number=number)
    for n in range(1, count + 1):
        Instance.objects.create(study=st, series=se, sop_instance_uid=f"{uid}.{n}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                                transfer_syntax_uid="1.2.840.10008.1.2.1", instance_number=n, path=f"x/{uid}.{n}.dcm",
                                size=1, received_at=now)

s1 = study("1.2.9.1", "PAT001", "DOE^JANE", dt.date(2026, 11, 20), "CT\\PR", "19700101")
series(s1, "1.2.9.1.1", "CT", 1, 3)
series(s1, "1.2.9.1.2", "PR", 2, 1)
s2 = study("1.2.9.2", "PAT001", "DOE^JANE", dt.date(2026, 11, 25), "MR", "19700101")
series(s2, "1.2.9.2.1", "MR", 1, 2)
s3 = study("1.2.9.3", "PAT002", "ROE^RICHARD", dt.date(2026, 10, 1), "CT", "19800505")
series(s3, "1.2.9.3.1", "CT", 1, 2)
purged = study("1.2.9.4", "PAT002", "ROE^RICHARD", dt.date(2026, 1, 1), "CT", "19800505")
purged.purged_at = now
purged.save()

def ask(top, **keys):
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    query, rows = qr.find(ds, top, calling_ae_title="T")
    return [qr.build_answer(query, row) for row in rows]

patients = ask("PATIENT", QueryRetrieveLevel="PATIENT", PatientID="", NumberOfPatientRelatedStudies="",
               NumberOfPatientRelatedSeries="", NumberOfPatientRelatedInstances="", PatientBirthDate="-19751231")
assert [(a.PatientID, a.NumberOfPatientRelatedStudies, a.NumberOfPatientRelatedSeries,
         a.NumberOfPatientRelatedInstances) for a in patients] == [("PAT001", 2, 3, 6)], patients
studies = ask("STUDY", QueryRetrieveLevel="STUDY", StudyInstanceUID="", ModalitiesInStudy="P?",
              NumberOfStudyRelatedSeries="", NumberOfStudyRelatedInstances="")
assert [(a.StudyInstanceUID, list(a.ModalitiesInStudy), a.NumberOfStudyRelatedSeries,
         a.NumberOfStudyRelatedInstances) for a in studies] == [("1.2.9.1", ["CT", "PR"], 2, 4)], studies
assert [a.StudyInstanceUID for a in ask("STUDY", QueryRetrieveLevel="STUDY", StudyInstanceUID="",
                                        ModalitiesInStudy="CT")] == ["1.2.9.3", "1.2.9.1"]  # by their series
assert [a.StudyInstanceUID for a in ask("STUDY", QueryRetrieveLevel="STUDY", PatientName="roe*",
                                        StudyInstanceUID="")] == ["1.2.9.4", "1.2.9.3"]  # purged: found, fetched back
assert [a.SeriesInstanceUID for a in ask("STUDY", QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2.9.1",
                                         SeriesInstanceUID="", Modality="C*")] == ["1.2.9.1.1"]
images = ask("PATIENT", QueryRetrieveLevel="IMAGE", PatientID="PAT001", StudyInstanceUID="1.2.9.1",
             SeriesInstanceUID="1.2.9.1.1", SOPInstanceUID="", InstanceNumber="2")
assert [(a.SOPInstanceUID, a.PatientID, a.StudyInstanceUID, a.SeriesInstanceUID) for a in images] == [
    ("1.2.9.1.1.2", "PAT001", "1.2.9.1", "1.2.9.1.1")], images
try:
    ask("PATIENT", QueryRetrieveLevel="STUDY", StudyInstanceUID="")
except IdentifierError:
    pass
else:
    raise AssertionError("a study query without PatientID was answered in Patient Root")
ds = Dataset()
ds.QueryRetrieveLevel = "SERIES"
ds.StudyInstanceUID = "1.2.9.1"
ds.SeriesInstanceUID = ["1.2.9.1.1", "1.2.9.1.2"]
assert [i.sop_instance_uid for i in qr.plan_retrieval(ds, "STUDY")] == [
    "1.2.9.1.1.1", "1.2.9.1.1.2", "1.2.9.1.1.3", "1.2.9.1.2.1"]
print("qr on sqlite: done")
'''


def test_query_retrieve_find_and_retrieval_plan_on_sqlite(tmp_path):
    SqliteEngine(tmp_path, "qr.sqlite3").run_script(SCRIPT, "qr on sqlite: done")
