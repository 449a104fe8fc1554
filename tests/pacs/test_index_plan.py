"""What indexing a received instance writes, decided by one plain function
(``pacs.services.index_plan``): no database, no files."""

from __future__ import annotations

import datetime as dt

import pytest

from pacs.models import images as im
from pacs.services.index_plan import (
    TOUCH_EVERY,
    AlreadyStored,
    Held,
    InstanceAttributes,
    InstanceConflict,
    SeriesHeld,
    StudyHeld,
    plan_instance,
    plan_replacement,
    remembered,
)

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
ATTRS = InstanceAttributes(
    sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid="1.2.3.4.1", study_instance_uid="1.2.3",
    series_instance_uid="1.2.3.4", transfer_syntax_uid="1.2.840.10008.1.2.1", accession_number="ACC1",
    patient_id="P1", patient_name="DOE^JANE", modality="CT", series_number=1, instance_number=1,
    calling_ae_title="MODALITY",
)


def study(status=im.RECEIVING, modalities="CT", last=NOW - dt.timedelta(minutes=5), mpps=False, pk=7):
    return StudyHeld(pk, status, modalities, last, mpps)


def plan(held: Held):
    return plan_instance(ATTRS, held, relative="1.2.3/1.2.3.4/1.2.3.4.1.dcm", size=100, now=NOW)


def test_a_stored_sop_instance_uid_is_a_resend_even_when_its_series_is_in_another_study():
    """PS3.4 B.4.1.3: a SOP Instance UID names one content; what a resend does is for
    pacs.services.resends to decide, before any other check."""
    with pytest.raises(AlreadyStored):
        plan(Held(study=None, series=SeriesHeld(3, 99), instance_id=11))
    with pytest.raises(AlreadyStored):
        plan(Held(study=study(), series=SeriesHeld(3, 7), instance_id=11))


@pytest.mark.parametrize("held_study", [None, study(pk=8)])
def test_a_series_stored_under_another_study_is_refused(held_study):
    with pytest.raises(InstanceConflict):
        plan(Held(study=held_study, series=SeriesHeld(3, 7)))


def test_a_new_study_keeps_its_first_instances_attributes_and_is_matched():
    p = plan(Held(study=None, series=None))
    assert p.study_id is None and p.series_id is None and p.match_order and not p.reopen_cause
    assert p.new_study["study_instance_uid"] == "1.2.3" and p.new_study["accession_number"] == "ACC1"
    assert p.new_study["modalities_in_study"] == "CT" and p.new_study["last_received_at"] == NOW
    assert p.new_series == {"series_instance_uid": "1.2.3.4", "modality": "CT", "series_number": 1,
                            "series_description": "", "body_part_examined": ""}
    assert p.instance["sop_instance_uid"] == "1.2.3.4.1" and p.instance["received_at"] == NOW


def test_last_received_at_moves_only_when_older_than_touch_every():
    fresh = plan(Held(study=study(last=NOW - TOUCH_EVERY / 2), series=SeriesHeld(3, 7)))
    assert fresh.study_changes is None and fresh.series_id == 3 and fresh.new_series is None
    stale = plan(Held(study=study(last=NOW - TOUCH_EVERY * 2), series=SeriesHeld(3, 7)))
    assert stale.study_changes == {"last_received_at": NOW, "updated_at": NOW}


def test_a_new_modality_is_added_to_modalities_in_study():
    p = plan(Held(study=study(modalities="MR", last=NOW), series=None))
    assert p.study_changes == {"modalities_in_study": "MR\\CT", "updated_at": NOW}
    assert p.new_series is not None and not p.match_order


@pytest.mark.parametrize("status", [im.COMPLETE, im.ARCHIVED])
def test_a_late_instance_reopens_a_study_and_says_whether_an_mpps_completed(status):
    p = plan(Held(study=study(status=status, mpps=True), series=SeriesHeld(3, 7)))
    assert p.reopen_cause == "late instance 1.2.3.4.1" and p.mpps_completed and not p.match_order


def test_a_remembered_series_plans_without_a_read_and_states_what_it_assumed():
    p = plan(remembered(ATTRS, (7, 3)))
    assert (p.study_id, p.series_id, p.new_series, p.study_changes) == (7, 3, None, None)
    assert p.touch_older_than == NOW - TOUCH_EVERY
    assert (p.requires.study_id, p.requires.study_instance_uid, p.requires.status, p.requires.modality) == (
        7, "1.2.3", im.RECEIVING, "CT")
    assert remembered(ATTRS, None) is None


def test_a_replacement_updates_the_row_and_takes_the_new_study_attributes():
    held = Held(study=study(status=im.ARCHIVED, modalities="CT"), series=SeriesHeld(3, 7), instance_id=11)
    p = plan_replacement(ATTRS, held, instance_id=11, relative="x.dcm", size=5, now=NOW)
    assert p.instance_id == 11 and p.instance["batch"] is None and "sop_instance_uid" not in p.instance
    assert p.study_changes["patient_name"] == "DOE^JANE" and p.study_changes["last_received_at"] == NOW
    assert p.reopen_cause == "replaced instance 1.2.3.4.1"
    moved = plan_replacement(ATTRS, Held(study=None, series=None, instance_id=11), instance_id=11, relative="x.dcm",
                             size=5, now=NOW)
    assert moved.new_study is not None and moved.match_order
    with pytest.raises(InstanceConflict):
        plan_replacement(ATTRS, Held(study=study(pk=8), series=SeriesHeld(3, 7), instance_id=11), instance_id=11,
                         relative="x.dcm", size=5, now=NOW)
