"""A study sent to the engine and completed, for the routing tests: dcmtk's storescu sends the
images of a scheduled step, and the study is completed as the quiet-period sweep would."""

from __future__ import annotations

import datetime as dt

from django.utils import timezone
from pydicom.uid import generate_uid

from pacs.models import Study
from pacs.services import completion
from ris.models import PatientIdentifier
from tests.factories import make_patient, make_step
from tests.support.dicom import port
from tests.support.orthanc import storescu, write_study


def send_matched_study(engine, tmp_path, n=5, *, patient_name="DOE^JOHNNY", **kwargs):
    """Store a study of ``n`` CT images (dcmtk's storescu) that matches a scheduled step of patient P1."""
    known = PatientIdentifier.objects.filter(id_number="P1", assigning_authority="HOSP").first()
    patient = known.patient if known else make_patient("DOE^JOHN", "P1")
    step = make_step(patient, accession=f"A{generate_uid()[-10:]}", modality="CT")
    rp = step.requested_procedure
    paths = write_study(tmp_path / generate_uid(), n, study_instance_uid=rp.study_instance_uid,
                        accession_number=rp.accession_number, patient_id="P1", patient_name=patient_name, **kwargs)
    proc = storescu(port(engine), paths)
    assert proc.returncode == 0, proc.stderr
    return Study.objects.get(study_instance_uid=rp.study_instance_uid), paths


def complete_now(study):
    """Complete the study as the quiet-period sweep would (PS3.4 F.7 gives no end of a study: the
    engine's quiet period stands for it), without waiting for the sweep."""
    assert completion.check_study(study.pk, now=timezone.now() + dt.timedelta(seconds=5))
