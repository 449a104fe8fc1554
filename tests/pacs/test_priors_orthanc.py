"""Relevant priors of a new order, with a real Orthanc as the VNA and a real Celery worker: the
patient's earlier studies are held by Orthanc under an identifier retired by an A40 merge; the
order's arrival finds them by C-FIND under every identifier, chooses the relevant ones and
fetches them by C-MOVE to the engine's AE (Orthanc knows the engine as a DICOM modality)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import transaction
from django.utils import timezone
from pydicom.uid import generate_uid

from pacs.models import Prior, Study, VnaDestination
from pacs.models import images as im
from pacs.models import priors as pr
from pacs.models import transfers as tr
from ris.models import StatusChange
from tests.support.orthanc import OrthancProcess, storescu, write_study
from tests.support.priors import merged_patient, new_order, prior_in, years_ago
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]










def test_priors_under_a_merged_away_id_are_found_chosen_and_fetched(engine, orthanc, routing_settings, worker,
                                                                    tmp_path, client):
    vna = VnaDestination.objects.create(name="orthanc", kind=tr.KIND_DICOM, ae_title=orthanc.aet,
                                        host="127.0.0.1", port=orthanc.dicom_port)
    newer = prior_in(orthanc, tmp_path, patient_id="OLD7", modality="CT", years=1)
    older = prior_in(orthanc, tmp_path, patient_id="OLD7", modality="CT", years=2, n=3)
    other_modality = prior_in(orthanc, tmp_path, patient_id="OLD7", modality="MR", years=1)
    too_old = prior_in(orthanc, tmp_path, patient_id="OLD7", modality="CT", years=8)
    someone_else = prior_in(orthanc, tmp_path, patient_id="X99", modality="CT", years=1)
    merged_patient()

    rp_pk = new_order("CT")

    wait_for(lambda: Prior.objects.filter(requested_procedure_id=rp_pk).count() == 2
             and not Prior.objects.filter(requested_procedure_id=rp_pk).exclude(status=pr.READY).exists(), 90,
             message="two priors ready", detail=lambda: worker.log()[-3000:])
    chosen = list(Prior.objects.filter(requested_procedure_id=rp_pk))  # newest first
    assert [p.study_instance_uid for p in chosen] == [newer, older]
    assert all(p.source_id == vna.pk and p.patient_id == "OLD7" and p.attempts == 1 for p in chosen)
    assert {other_modality, too_old, someone_else}.isdisjoint(
        Prior.objects.values_list("study_instance_uid", flat=True))
    # Fetched into the engine's own store, counted as archived (the VNA holds them): not routed back.
    for uid, n in ((newer, 2), (older, 3)):
        study = Study.objects.get(study_instance_uid=uid)
        assert study.instances.count() == n and study.status == im.ARCHIVED and study.patient_id == "OLD7"
        assert not study.transfers.exists()
    assert not Study.objects.filter(study_instance_uid__in=[other_modality, too_old, someone_else]).exists()
    history = [c.to_status for c in StatusChange.objects.filter(entity="prior", object_id=chosen[0].pk)]
    assert history == [pr.IN_PROGRESS, pr.READY]
    # The prior fetches page shows them with their state and attempts.
    from django.urls import reverse

    from project.access import ADMINISTRATOR
    from tests.factories import user

    client.force_login(user("priors-admin", ADMINISTRATOR))
    page = client.get(reverse("imaging:priors")).content.decode()
    assert page.count('data-status="READY"') == 2 and "orthanc" in page
    # Fetched priors wait for no person on the reconciliation queue.
    queue = client.get(reverse("imaging:reconciliation")).content.decode()
    assert newer not in queue and older not in queue
    # The query of the VNA is on the audit trail (PS3.15 A.5.3.10), with both identifiers asked.
    from audit import trail
    from audit.models import AuditRecord
    from project.auditing import events

    trail.flush()
    (asked,) = AuditRecord.records.filter(event_id=events.QUERY.value, actor="priors")
    assert asked.destination == f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}" and asked.outcome == events.SUCCESS
    # Only the studies within PRIORS_MAX_YEARS asked for (StudyDate range matching, PS3.4
    # C.2.2.2.5): newer, older and other_modality answered, too_old not.
    (query,) = [o for o in asked.objects if o["type"] == "query"]
    assert query["detail"]["keys"]["StudyDate"] == f"{timezone.localdate().year - 5}{timezone.localdate():%m%d}-"
    assert asked.detail == {"answers": 3}
    assert {(p.patient_id, p.issuer) for p in asked.patients.all()} == {("OLD7", "HOSP"), ("P7", "HOSP")}


def test_a_prior_held_locally_is_ready_without_a_fetch_and_shown_with_its_report(
        engine, orthanc, routing_settings, worker, tmp_path, client):
    """An earlier order of the patient, read and reported in the engine, its images still held:
    chosen without asking the VNA for images; the reading worklist counts it and the study page
    lists it with the report's text."""
    from django.urls import reverse

    from pacs.models import Instance
    from ris.models import Patient
    from tests.factories import oru_study, radiologist, sign_report
    from tests.support.dicom import port
    from worklist.services import mark_ready_for_reading

    VnaDestination.objects.create(name="orthanc", kind=tr.KIND_DICOM, ae_title=orthanc.aet,
                                  host="127.0.0.1", port=orthanc.dicom_port)
    merged_patient()
    earlier = oru_study(for_patient=Patient.objects.get(identifiers__id_number="P7"), modality="CT")
    paths = write_study(tmp_path / "earlier", 2, study_instance_uid=earlier.study_instance_uid, modality="CT",
                        patient_id="P7", accession_number=earlier.accession_number, study_date=years_ago(3))
    assert storescu(port(engine), paths).returncode == 0
    assert Instance.objects.filter(study__study_instance_uid=earlier.study_instance_uid).count() == 2
    reader = radiologist("reader")
    sign_report(earlier, reader, findings="Stable 4 mm nodule, right upper lobe.", impression="Follow up.")

    rp_pk = new_order("CT")

    wait_for(lambda: Prior.objects.filter(requested_procedure_id=rp_pk, status=pr.READY).exists(), 60,
             message="local prior ready", detail=lambda: worker.log()[-3000:])
    prior = Prior.objects.get(requested_procedure_id=rp_pk)
    assert prior.study_instance_uid == earlier.study_instance_uid
    assert prior.source_id is None and prior.attempts == 0
    assert orthanc.count_instances() == 0  # nothing was asked of the VNA's images

    with transaction.atomic():
        mark_ready_for_reading(rp_pk)
    client.force_login(reader)
    listing = client.get(reverse("worklist:list")).content.decode()
    assert '<td class="priors-ready">1</td>' in listing
    page = client.get(reverse("worklist:study", args=[rp_pk])).content.decode()
    assert f'data-study-instance-uid="{earlier.study_instance_uid}" data-status="READY"' in page
    assert "Stable 4 mm nodule, right upper lobe." in page


def test_a_prior_the_engine_holds_in_part_is_fetched_whole_by_c_move(engine, orthanc, routing_settings, worker,
                                                                     tmp_path, client):
    """A modality sent the engine one image of a study the VNA holds whole (three): the C-FIND's
    NumberOfStudyRelatedInstances (0020,1208) says the engine lacks two; the prior is fetched, not
    taken as held, and READY once the three are here."""
    from tests.support.dicom import port

    VnaDestination.objects.create(name="orthanc", kind=tr.KIND_DICOM, ae_title=orthanc.aet,
                                  host="127.0.0.1", port=orthanc.dicom_port)
    uid = prior_in(orthanc, tmp_path, patient_id="OLD7", modality="CT", years=1, n=3)
    assert storescu(port(engine), sorted((tmp_path / uid).glob("*.dcm"))[:1]).returncode == 0
    merged_patient()

    rp_pk = new_order("CT")

    wait_for(lambda: Prior.objects.filter(requested_procedure_id=rp_pk, status=pr.READY).exists(), 90,
             message="prior ready", detail=lambda: worker.log()[-3000:])
    prior = Prior.objects.get(requested_procedure_id=rp_pk)
    assert prior.study_instance_uid == uid and prior.number_of_instances == 3 and prior.attempts == 1
    assert Study.objects.get(study_instance_uid=uid).instances.count() == 3
    assert [c.to_status for c in StatusChange.objects.filter(entity="prior", object_id=prior.pk)] == [
        pr.IN_PROGRESS, pr.READY]
    # The fetches page shows what is held beside what the VNA counts.
    from django.urls import reverse

    from project.access import TECHNOLOGIST
    from tests.factories import user

    client.force_login(user("priors-tech", TECHNOLOGIST))
    assert '<td class="instances">3 of 3</td>' in client.get(reverse("imaging:priors")).content.decode()


def test_a_vna_that_does_not_know_the_engine_fails_the_fetch_with_the_reason(engine, routing_settings, worker,
                                                                              tmp_path):
    from tests.support.dicom import port

    # Orthanc answers C-FIND and C-MOVE from any AE, but knows no modality called PACS.
    vna = OrthancProcess(tmp_path / "stranger", engine_aet="SOMEONE", engine_port=port(engine),
                         extra={"DicomAlwaysAllowFind": True, "DicomAlwaysAllowMove": True}).start()
    try:
        VnaDestination.objects.create(name="stranger", kind=tr.KIND_DICOM, ae_title=vna.aet,
                                      host="127.0.0.1", port=vna.dicom_port)
        uid = prior_in(vna, tmp_path, patient_id="OLD7", modality="CT", years=1)
        merged_patient()

        rp_pk = new_order("CT")

        wait_for(lambda: Prior.objects.filter(requested_procedure_id=rp_pk, status=pr.FAILED).exists(), 60,
                 message="prior fetch failed", detail=lambda: worker.log()[-3000:])
        prior = Prior.objects.get(requested_procedure_id=rp_pk)
        assert prior.study_instance_uid == uid and prior.attempts == 1  # permanent: not retried
        # Orthanc 1.10.1 answers an unknown move destination with 0xC000 (PS3.4 C.4.2.1.4.1: 0xA801).
        assert prior.reason.startswith("permanent: C-MOVE refused") and "PACS as a move destination" in prior.reason, \
            prior.reason
        assert not Study.objects.filter(study_instance_uid=uid).exists()
    finally:
        vna.stop()


@pytest.mark.socket
def test_a_vna_that_cannot_be_reached_is_retried_with_backoff_then_given_up(broker, routing_settings):
    """No association (nothing listens on the VNA's port): each attempt is transient, leaves the
    row RETRYING with the reason and a later next attempt, until TRANSFER_MAX_ATTEMPTS."""
    from pacs.services import priors
    from tests.factories import make_step
    from tests.support.net import free_port

    routing_settings.TRANSFER_MAX_ATTEMPTS = 2
    routing_settings.TRANSFER_RETRY_BASE_SECONDS, routing_settings.TRANSFER_RETRY_MAX_SECONDS = 60.0, 120.0
    vna = VnaDestination.objects.create(name="away", kind=tr.KIND_DICOM, ae_title="AWAY", host="127.0.0.1",
                                        port=free_port())
    rp = make_step(modality="CT").requested_procedure
    prior = Prior.objects.create(requested_procedure=rp, study_instance_uid=generate_uid(), source=vna,
                                 study_date=years_ago(1), modalities_in_study="CT", next_attempt_at=timezone.now())

    assert priors.run_fetch(prior.pk) == pr.RETRYING
    prior.refresh_from_db()
    assert prior.attempts == 1 and "no association with dicom://AWAY@127.0.0.1" in prior.reason
    assert prior.next_attempt_at > timezone.now() + dt.timedelta(seconds=20) and prior.lease_expires_at is None
    assert priors.run_fetch(prior.pk) == "skipped"  # not due yet

    Prior.objects.filter(pk=prior.pk).update(next_attempt_at=timezone.now())
    assert priors.run_fetch(prior.pk) == pr.FAILED
    prior.refresh_from_db()
    assert prior.attempts == 2 and prior.reason.startswith("gave up after 2 attempts")
    assert [c.to_status for c in StatusChange.objects.filter(entity="prior", object_id=prior.pk)] == [
        pr.IN_PROGRESS, pr.RETRYING, pr.IN_PROGRESS, pr.FAILED]
