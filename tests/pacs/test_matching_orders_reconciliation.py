"""The reconciliation page: an unmatched study sent by storescu is linked by a technologist to
an order, or to a patient with a new filler order (ORC-1 SN); linking is recorded with the
user, the corrections for the VNA recorded, and the study completes."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.urls import reverse
from django.utils import timezone
from pydicom.uid import generate_uid

from pacs.models import Study, StudyLink
from pacs.models import images as im
from project.access import ADMINISTRATOR, RADIOLOGIST, TECHNOLOGIST
from ris.models import Order
from tests.factories import make_patient, make_step, user
from tests.support.dicom import port
from tests.support.orthanc import storescu, write_study
from worklist.models import ReadingItem

pytestmark = pytest.mark.django_db(transaction=True)


def login(client, name, *roles):
    signed_in = user(name, *roles)
    client.force_login(signed_in)
    return signed_in


def unmatched_study(engine, tmp_path, **kwargs) -> Study:
    uid = generate_uid()
    # Another day than the order's scheduled step: patient + date + modality cannot match it either.
    paths = write_study(tmp_path / uid, 2, study_instance_uid=uid, accession_number="TYPO123",
                        study_date=dt.date(2026, 10, 1), **kwargs)
    assert storescu(port(engine), paths).returncode == 0
    study = Study.objects.get(study_instance_uid=uid)
    assert study.requested_procedure_id is None
    return study


def test_unmatched_study_is_linked_from_the_page(engine, tmp_path, client, settings):
    settings.STUDY_QUIET_PERIOD_SECONDS = 1
    settings.VNA_DESTINATIONS = ""
    patient = make_patient("DOE^JANE", patient_id="P500", issuer="HOSP")
    step = make_step(patient, accession="ACC500")
    study = unmatched_study(engine, tmp_path, patient_id="P500", patient_name="DOE^JANE")
    login(client, "tech", TECHNOLOGIST)

    page = client.get(reverse("imaging:reconciliation"))
    assert page.status_code == 200 and "TYPO123" in page.content.decode()
    detail = client.get(reverse("imaging:reconcile_study", args=[study.pk]))
    assert "ACC500" in detail.content.decode()  # the patient's order is offered

    # The quiet period passes while the study waits: the clock moved past it, not slept through.
    with time_machine.travel(timezone.now() + dt.timedelta(seconds=2), tick=True):
        response = client.post(reverse("imaging:link_study", args=[study.pk]),
                               {"requested_procedure_id": step.requested_procedure_id, "note": "typo in accession"})
    assert response.status_code == 302
    study.refresh_from_db()
    assert study.requested_procedure_id == step.requested_procedure_id and study.match_method == im.MATCH_MANUAL
    assert study.corrections == {"AccessionNumber": ["TYPO123", "ACC500"]}
    link = StudyLink.objects.get(study=study)
    assert link.actor == "tech" and link.note == "typo in accession"
    assert study.status == im.COMPLETE  # linked after the quiet period: complete at once
    assert ReadingItem.objects.filter(requested_procedure=step.requested_procedure).exists()
    assert "TYPO123" not in client.get(reverse("imaging:reconciliation")).content.decode()


def test_encounter_based_study_gets_a_new_filler_order(engine, tmp_path, client, settings):
    settings.VNA_DESTINATIONS = ""
    patient = make_patient("POCUS^PAT", patient_id="P600", issuer="HOSP")
    study = unmatched_study(engine, tmp_path, patient_id="P600", patient_name="POCUS^PAT", modality="US",
                            sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1")
    login(client, "admin", ADMINISTRATOR)
    detail = client.get(reverse("imaging:reconcile_study", args=[study.pk]))
    assert "Create order (SN)" in detail.content.decode()
    response = client.post(reverse("imaging:new_order", args=[study.pk]),
                           {"patient": patient.pk, "description": "POCUS abdomen"})
    assert response.status_code == 302
    study.refresh_from_db()
    rp = study.requested_procedure
    order = Order.objects.get(pk=rp.order_id)
    assert order.created_by_filler and order.order_control == "SN" and order.patient_id == patient.pk
    assert rp.study_instance_uid == study.study_instance_uid and rp.accession_assigned_by_us
    assert study.match_method == im.MATCH_NEW_ORDER
    assert study.corrections["AccessionNumber"] == ["TYPO123", rp.accession_number]
    assert StudyLink.objects.get(study=study).created_order


def test_reconciliation_roles(client, transactional_db):
    login(client, "rad", RADIOLOGIST)
    assert client.get(reverse("imaging:reconciliation")).status_code == 403
    assert client.post(reverse("imaging:link_study", args=[1]), {"requested_procedure_id": 1}).status_code == 403
    client.logout()
    assert client.get(reverse("imaging:reconciliation")).status_code == 302  # to the login page


def test_bad_reconciliation_input_is_refused_and_changes_nothing(engine, tmp_path, client, settings):
    settings.VNA_DESTINATIONS = ""
    patient = make_patient("DOE^JOHN", patient_id="P700", issuer="HOSP")
    step = make_step(patient, accession="ACC700")
    study = unmatched_study(engine, tmp_path, patient_id="P700", patient_name="DOE^JOHN")
    login(client, "tech3", TECHNOLOGIST)
    link_url = reverse("imaging:link_study", args=[study.pk])

    for bad in ("", "not-a-number", "999999999"):
        response = client.post(link_url, {"requested_procedure_id": bad}, follow=True)
        assert response.status_code == 200 and "Not linked" in response.content.decode()
    response = client.post(reverse("imaging:new_order", args=[study.pk]), {"patient": "999999999"}, follow=True)
    assert "No order created" in response.content.decode()
    # A study that does not exist: a clear refusal, not a server error.
    response = client.post(reverse("imaging:link_study", args=[999999999]),
                           {"requested_procedure_id": step.requested_procedure_id})
    assert response.status_code in (302, 404)
    study.refresh_from_db()
    assert study.requested_procedure_id is None and not StudyLink.objects.exists()
    assert Order.objects.count() == 1

    # Linked once; a second "new order" for the same study is refused and creates nothing.
    client.post(link_url, {"requested_procedure_id": step.requested_procedure_id})
    response = client.post(reverse("imaging:new_order", args=[study.pk]), {"patient": patient.pk}, follow=True)
    assert "No order created" in response.content.decode()
    assert StudyLink.objects.count() == 1 and Order.objects.count() == 1
