"""Journey of a study sent with a mistyped accession (C-STORE to the engine's AE): unmatched and
waiting, overdue for the VNA once the threshold has passed; after a person links it on the
reconciliation service, the order's journey shows who reconciled it."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone
from pydicom.uid import generate_uid

from monitoring import journey
from pacs.models import Study
from pacs.services.order_matching import link_study
from tests.factories import make_patient, make_step
from tests.support.dicom import port
from tests.support.orthanc import storescu, write_study

pytestmark = pytest.mark.django_db(transaction=True)


def test_unmatched_then_reconciled_by_a_person(engine, tmp_path, settings):
    settings.VNA_DESTINATIONS = ""
    step = make_step(make_patient("DOE^JOHN", "P1"), accession="ACCR1", modality="CT", station="CT1")
    rp = step.requested_procedure
    paths = write_study(tmp_path / "s", 2, study_instance_uid=generate_uid(), accession_number="ACCRI",
                        patient_id="P9", patient_name="DOE^JOHN")
    proc = storescu(port(engine), paths, calling="CT2")
    assert proc.returncode == 0, proc.stderr
    study = Study.objects.get(accession_number="ACCRI")
    assert study.requested_procedure_id is None

    limits = journey.thresholds()
    steps = journey.timeline(journey.collect("ACCRI"), now=timezone.now(), **limits)
    assert [s.label for s in steps if s.kind != "status"] == ["instances received (first)", "not matched to an order"]
    assert steps[0].peer == "CT2" and not any(s.overdue for s in steps)
    later = timezone.now() + limits["vna_overdue"] + dt.timedelta(minutes=1)
    late = [s for s in journey.timeline(journey.collect("ACCRI"), now=later, **limits) if s.overdue]
    assert len(late) == 1 and "nothing queued for the VNA" in late[0].overdue_reason

    link_study(study.pk, rp.pk, actor="tech1", note="accession mistyped at the modality")
    steps = journey.timeline(journey.collect("ACCR1"), now=timezone.now(), **limits)
    linked = [s for s in steps if s.kind == "match"]
    assert len(linked) == 1 and linked[0].label == "reconciled by a person" and linked[0].peer == "tech1"
    assert "accession mistyped at the modality" in linked[0].outcome
    labels = [s.label for s in steps if s.kind != "status"]
    assert labels.index(f"step {step.scheduled_procedure_step_id} scheduled (CT)") < labels.index(
        "instances received (first)") < labels.index("reconciled by a person")
