"""The MWL's record for the journey (monitoring.WorklistQueryResult): dcmtk's findscu against the
engine's AE; one row per (step, calling AE) whatever the number of polls, first and last time kept;
the journey names the AE the item went to."""

from __future__ import annotations

import pytest
from django.utils import timezone

from monitoring import journey
from monitoring.records import WorklistQueryResult
from pacs.dimse import db
from tests.factories import make_patient, make_step
from tests.support.dicom import findscu

pytestmark = pytest.mark.django_db(transaction=True)


def test_polls_move_the_last_time_and_each_ae_gets_its_row(dicom_server, tmp_path, settings):
    settings.MWL_FILTER_BY_CALLING_AE = False
    step = make_step(make_patient("DOE^JANE", "P7"), accession="MWLREC1", modality="CT", station="CT1")
    other = make_step(make_patient("DOE^JIM", "P8"), accession="MWLREC2", modality="MR", station="MR1")
    for _ in range(2):
        proc, items = findscu(dicom_server, ["AccessionNumber=MWLREC1"], tmp_path / "a", aet="CT1")
        assert proc.returncode == 0 and len(items) == 1, proc.stderr
        db.flush()  # recorded after the answer, on a database thread
    row = WorklistQueryResult.objects.get(scheduled_step=step)
    assert row.calling_ae_title == "CT1" and row.last_returned_at > row.first_returned_at
    proc, items = findscu(dicom_server, ["AccessionNumber=MWLREC1"], tmp_path / "b", aet="CT9")
    assert proc.returncode == 0 and len(items) == 1
    db.flush()
    assert set(WorklistQueryResult.objects.values_list("calling_ae_title", flat=True)) == {"CT1", "CT9"}
    assert not WorklistQueryResult.objects.filter(scheduled_step=other).exists()  # not returned: not recorded
    # A query with no match records nothing.
    proc, items = findscu(dicom_server, ["AccessionNumber=NOPE"], tmp_path / "c", aet="CT1")
    assert proc.returncode == 0 and items == []
    db.flush()
    assert WorklistQueryResult.objects.count() == 2

    steps = journey.timeline(journey.collect("MWLREC1"), now=timezone.now(), **journey.thresholds())
    mwl = [s for s in steps if s.kind == "mwl"]
    assert [s.peer for s in mwl] == ["CT1", "CT9"]
    assert "again until" in mwl[0].outcome and "again" not in mwl[1].outcome


def test_a_failure_to_record_is_logged_and_does_not_raise(transactional_db, caplog):
    from monitoring.records import record_worklist_results

    record_worklist_results([987654321], "CT1")  # no such step: the foreign key refuses the row
    assert WorklistQueryResult.objects.count() == 0
    assert "MWL results not recorded for the journey" in caplog.text
