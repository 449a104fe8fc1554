"""Relevant priors from a VNA the engine reaches by DICOMweb only (a destination of kind STOW-RS):
a real Orthanc with its DICOMweb plug-in as the VNA.  The patient's earlier studies are held
there under an identifier retired by an A40 merge; the order's arrival finds them by QIDO-RS
(PS3.18 10.6) under every identifier, chooses the relevant ones and fetches them by WADO-RS
Retrieve Study (PS3.18 10.4), storing each instance as a received one.  Then what goes wrong:
the VNA away, a study it does not hold, an answer cut short or with a part that is not DICOM."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os

import pytest
import requests
from django.utils import timezone
from pydicom import dcmread
from pydicom.uid import generate_uid

from audit import trail
from audit.models import AuditRecord
from pacs import storage
from pacs.dimse import IMPLEMENTATION_CLASS_UID
from pacs.models import Instance, Prior, Series, Study, VnaDestination
from pacs.models import images as im
from pacs.models import priors as pr
from pacs.models import transfers as tr
from pacs.services import priors
from project.auditing import events
from ris.models import StatusChange
from tests.factories import make_step
from tests.support.dicomweb_faults import FaultyDicomWeb
from tests.support.net import free_port
from tests.support.orthanc import OrthancProcess, storescu, write_study
from tests.support.priors import merged_patient, new_order, prior_in, years_ago
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.socket, pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]








def _stow_destination(url: str) -> VnaDestination:
    return VnaDestination.objects.create(name="web-vna", kind=tr.KIND_STOW, url=url)






def _archived_file(vna: OrthancProcess, sop_instance_uid: str) -> bytes:
    found = requests.post(f"{vna.url}/tools/lookup", data=sop_instance_uid, timeout=30).json()
    oid = next(f["ID"] for f in found if f["Type"] == "Instance")
    return requests.get(f"{vna.url}/instances/{oid}/file", timeout=30).content


def _data_set_sha256(data: bytes) -> str:
    offset = storage.data_set_offset(io.BytesIO(data))
    return hashlib.sha256(data[offset:]).hexdigest()


def _incoming_files() -> list[str]:
    root = storage.storage_root() / ".incoming"
    return sorted(os.listdir(root)) if root.is_dir() else []


def _stored_files() -> list[str]:
    root = storage.storage_root()
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.dcm"))


def _a_prior(vna: VnaDestination, uid: str) -> Prior:
    rp = make_step(modality="CT").requested_procedure
    return Prior.objects.create(requested_procedure=rp, study_instance_uid=uid, source=vna, patient_id="OLD7",
                                issuer_of_patient_id="HOSP", study_date=years_ago(1), modalities_in_study="CT",
                                next_attempt_at=timezone.now())


# ------------------------------------------------------------------------------ found and fetched
def test_priors_under_a_merged_away_id_are_found_by_qido_rs_and_fetched_by_wado_rs(
        web_vna, routing_settings, worker, tmp_path):
    vna = _stow_destination(f"{web_vna.url}/dicom-web")
    newer = prior_in(web_vna, tmp_path, patient_id="OLD7", modality="CT", years=1)
    older = prior_in(web_vna, tmp_path, patient_id="OLD7", modality="CT", years=2, n=3)
    other_issuer = prior_in(web_vna, tmp_path, patient_id="OLD7", modality="CT", years=1,
                             issuer_of_patient_id="ELSEWHERE")
    other_modality = prior_in(web_vna, tmp_path, patient_id="OLD7", modality="MR", years=1)
    too_old = prior_in(web_vna, tmp_path, patient_id="OLD7", modality="CT", years=8)
    someone_else = prior_in(web_vna, tmp_path, patient_id="X99", modality="CT", years=1)
    merged_patient()

    rp_pk = new_order("CT")

    wait_for(lambda: Prior.objects.filter(requested_procedure_id=rp_pk).count() == 2
             and not Prior.objects.filter(requested_procedure_id=rp_pk).exclude(status=pr.READY).exists(), 90,
             message="two priors ready", detail=lambda: worker.log()[-3000:])
    chosen = list(Prior.objects.filter(requested_procedure_id=rp_pk))  # newest first
    assert [p.study_instance_uid for p in chosen] == [newer, older]
    assert all(p.source_id == vna.pk and p.patient_id == "OLD7" and p.attempts == 1 for p in chosen)
    assert {other_issuer, other_modality, too_old, someone_else}.isdisjoint(
        Prior.objects.values_list("study_instance_uid", flat=True))
    history = list(StatusChange.objects.filter(entity="prior", object_id=chosen[0].pk))
    assert [c.to_status for c in history] == [pr.IN_PROGRESS, pr.READY]
    assert history[-1].cause == "WADO-RS from web-vna: 2 instances"

    # Held here, counted as archived (the VNA holds them: not routed back), with the VNA's files:
    # the data set byte for byte (transfer-syntax=*: as the VNA holds it), behind the engine's
    # own zero preamble and File Meta Information, as a C-STORE received is written.
    for uid, n in ((newer, 2), (older, 3)):
        study = Study.objects.get(study_instance_uid=uid)
        assert study.instances.count() == n and study.status == im.ARCHIVED and study.patient_id == "OLD7"
        assert study.purged_at is None and not study.transfers.exists()
        for instance in Instance.objects.filter(study=study):
            path = storage.absolute_path(instance.path)
            held = path.read_bytes()
            archived = _archived_file(web_vna, instance.sop_instance_uid)
            assert _data_set_sha256(held) == _data_set_sha256(archived)
            assert held[:128] == b"\x00" * 128
            stored = dcmread(path)
            assert stored.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
            assert stored == dcmread(io.BytesIO(archived))
    assert not Study.objects.filter(
        study_instance_uid__in=[other_issuer, other_modality, too_old, someone_else]).exists()
    assert _incoming_files() == []

    # On the audit trail: the query, with both identifiers asked, and each study fetched.
    trail.flush()
    (asked,) = AuditRecord.records.filter(event_id=events.QUERY.value, actor="priors")
    assert asked.destination == vna.url and asked.outcome == events.SUCCESS
    (query,) = [o for o in asked.objects if o["type"] == "query"]
    assert query["id"] == f"{vna.url}/studies" and query["detail"]["service"] == "QIDO-RS"
    # Asked only for the studies within PRIORS_MAX_YEARS (StudyDate range matching): the
    # eight-year-old study is not among the answers.
    assert query["detail"]["keys"]["StudyDate"] == f"{timezone.localdate().year - 5}{timezone.localdate():%m%d}-"
    assert asked.detail == {"answers": 3}
    assert {(p.patient_id, p.issuer) for p in asked.patients.all()} == {("OLD7", "HOSP"), ("P7", "HOSP")}
    fetched = AuditRecord.records.filter(event_id=events.INSTANCES_TRANSFERRED.value, action=events.CREATE,
                                         actor="priors")
    assert {(r.objects[-1]["id"], r.objects[-1]["detail"]["instances"], r.destination) for r in fetched} == {
        (newer, 2, vna.url), (older, 3, vna.url)}
    assert all({(p.patient_id, p.issuer) for p in r.patients.all()} == {("OLD7", "HOSP")} for r in fetched)
    # The worker's log names no patient.
    log = worker.log()
    assert "OLD7" not in log and "DOE^JO" not in log


def test_body_parts_of_a_prior_held_in_the_vna_come_from_a_series_search(web_vna, routing_settings, tmp_path):
    """PRIORS_MATCH=body_part: BodyPartExamined of the studies found, by QIDO-RS at the series level."""
    routing_settings.PRIORS_MATCH = "body_part"
    vna = _stow_destination(f"{web_vna.url}/dicom-web")
    chest = prior_in(web_vna, tmp_path, patient_id="OLD7", modality="CT", years=1, body_part_examined="CHEST")
    plain = prior_in(web_vna, tmp_path, patient_id="OLD7", modality="CT", years=2)
    rp = make_step(modality="CT").requested_procedure

    found, errors = priors.vna_candidates(rp, [("OLD7", "HOSP")])

    assert errors == []
    assert set(found) == {chest, plain}
    assert found[chest]["body_parts"] == frozenset({"CHEST"}) and found[plain]["body_parts"] == frozenset()
    assert found[chest]["source"] == vna.pk and found[chest]["modalities_in_study"] == "CT"
    assert found[chest]["study_date"] == years_ago(1) and found[chest]["accession_number"] == f"OLD{chest[-6:]}"


def test_nothing_in_the_vna_for_the_patient_is_an_empty_answer_on_the_audit_trail(web_vna, routing_settings):
    vna = _stow_destination(f"{web_vna.url}/dicom-web")
    rp = make_step(modality="CT").requested_procedure

    found, errors = priors.vna_candidates(rp, [("NOBODY1", "HOSP")])

    assert found == {} and errors == []
    trail.flush()
    (asked,) = AuditRecord.records.filter(event_id=events.QUERY.value, actor="priors")
    assert asked.destination == vna.url and asked.outcome == events.SUCCESS and asked.detail == {"answers": 0}


def test_a_prior_the_engine_holds_in_part_is_fetched_whole(web_vna, engine, broker, routing_settings, tmp_path):
    """A modality sent the engine one image of a study the VNA holds whole (three): holding part
    of it is not holding it.  The VNA's NumberOfStudyRelatedInstances (a QIDO-RS study result
    attribute) is kept on the prior, which is fetched; READY once the three are held."""
    from tests.support.dicom import port

    _stow_destination(f"{web_vna.url}/dicom-web")
    uid = prior_in(web_vna, tmp_path, patient_id="OLD7", modality="CT", years=1, n=3)
    assert storescu(port(engine), sorted((tmp_path / uid).glob("*.dcm"))[:1]).returncode == 0
    assert priors.instances_held(uid) == 1
    merged_patient()
    rp_pk = new_order("CT")  # its search is queued for a worker; this test runs it itself

    (pk,) = priors.find_priors(rp_pk)

    prior = Prior.objects.get(pk=pk)
    assert prior.study_instance_uid == uid and prior.number_of_instances == 3
    assert prior.status == pr.SCHEDULED and prior.attempts == 0  # not ready on the part held
    assert priors.instances_held_of([uid, generate_uid()]) == {uid: 1}  # the fetches page's column
    assert priors.run_fetch(pk) == pr.READY
    prior.refresh_from_db()
    assert prior.attempts == 1 and priors.instances_held(uid) == 3


def test_a_fetch_leaving_fewer_instances_than_the_vna_counts_is_retried(web_vna, broker, store_dir,
                                                                       routing_settings, tmp_path):
    """The VNA counted more instances when searched than its retrieval gives (some deleted or
    rejected there since): the attempt stored what came and is retried with the counts in the
    reason, never READY with instances missing; it fails with them when the attempts run out."""
    routing_settings.TRANSFER_MAX_ATTEMPTS = 2
    uid = prior_in(web_vna, tmp_path, patient_id="OLD7", modality="CT", years=1, n=2)
    vna = _stow_destination(f"{web_vna.url}/dicom-web")
    prior = _a_prior(vna, uid)
    Prior.objects.filter(pk=prior.pk).update(number_of_instances=3)

    assert priors.run_fetch(prior.pk) == pr.RETRYING
    prior.refresh_from_db()
    assert prior.reason == "WADO-RS succeeded (2 sent) but the engine holds 2 instances of the 3 the VNA counts"
    Prior.objects.filter(pk=prior.pk).update(next_attempt_at=timezone.now())
    assert priors.run_fetch(prior.pk) == pr.FAILED
    prior.refresh_from_db()
    assert prior.reason.startswith("gave up after 2 attempts: WADO-RS succeeded (2 sent)"), prior.reason
    assert priors.instances_held(uid) == 2


# ------------------------------------------------------------------------------ what goes wrong
def test_the_vna_away_is_transient_retried_with_the_reason_then_given_up(broker, store_dir, routing_settings):
    """Nothing listens at the VNA's URL: the search records the failure (and is retried by the
    task); each fetch attempt is transient, leaves the row RETRYING with the reason and a later
    next attempt, until TRANSFER_MAX_ATTEMPTS."""
    routing_settings.TRANSFER_MAX_ATTEMPTS = 2
    routing_settings.TRANSFER_RETRY_BASE_SECONDS, routing_settings.TRANSFER_RETRY_MAX_SECONDS = 60.0, 120.0
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    vna = _stow_destination(url)
    rp = make_step(modality="CT").requested_procedure

    found, errors = priors.vna_candidates(rp, [("OLD7", "HOSP")])
    assert found == {} and errors == [f"QIDO-RS to {url}: ConnectionError"]
    trail.flush()
    (asked,) = AuditRecord.records.filter(event_id=events.QUERY.value, actor="priors")
    assert asked.outcome == events.SERIOUS_FAILURE and asked.destination == url

    prior = _a_prior(vna, generate_uid())
    assert priors.run_fetch(prior.pk) == pr.RETRYING
    prior.refresh_from_db()
    assert prior.attempts == 1 and prior.reason == f"WADO-RS to {url}: ConnectionError"
    assert prior.next_attempt_at > timezone.now() + dt.timedelta(seconds=20) and prior.lease_expires_at is None
    assert priors.run_fetch(prior.pk) == "skipped"  # not due yet

    Prior.objects.filter(pk=prior.pk).update(next_attempt_at=timezone.now())
    assert priors.run_fetch(prior.pk) == pr.FAILED
    prior.refresh_from_db()
    assert prior.attempts == 2 and prior.reason.startswith("gave up after 2 attempts: WADO-RS to")
    assert [c.to_status for c in StatusChange.objects.filter(entity="prior", object_id=prior.pk)] == [
        pr.IN_PROGRESS, pr.RETRYING, pr.IN_PROGRESS, pr.FAILED]


def test_a_study_the_vna_does_not_hold_fails_at_once_with_the_reason(web_vna, broker, store_dir, routing_settings):
    vna = _stow_destination(f"{web_vna.url}/dicom-web")
    prior = _a_prior(vna, generate_uid())

    assert priors.run_fetch(prior.pk) == pr.FAILED
    prior.refresh_from_db()
    assert prior.attempts == 1  # permanent: not retried
    assert prior.reason == f"permanent: WADO-RS: {vna.url} does not hold the study (HTTP 404)"
    assert not Study.objects.filter(study_instance_uid=prior.study_instance_uid).exists()


@pytest.mark.parametrize(("fault", "reason"), [
    ("cut", "broken off after 0 instances: ChunkedEncodingError"),  # urllib3 reads the whole chunk first
    ("cut-unframed", "cut short after 1 instances: the body ended inside a part"),
    ("bad-part", "part 2 is not usable: not a DICOM PS3.10 file"),
    ("status:503", "WADO-RS HTTP 503"),
    ("status:206", "sent only part of the study (HTTP 206)"),
])
def test_an_answer_cut_short_or_spoilt_stores_nothing_and_is_retried(web_vna, broker, store_dir, routing_settings,
                                                                      tmp_path, fault, reason):
    """No instance of a spoilt answer is stored, so the prior is not taken as held (no false
    READY) and nothing is half-indexed; the next attempt, with the answer whole, fetches it all."""
    uid = prior_in(web_vna, tmp_path, patient_id="OLD7", modality="CT", years=1, n=3)
    with FaultyDicomWeb(web_vna.url) as proxy:
        vna = _stow_destination(proxy.url)
        prior = _a_prior(vna, uid)
        proxy.fault = fault

        assert priors.run_fetch(prior.pk) == pr.RETRYING
        prior.refresh_from_db()
        assert reason in prior.reason, prior.reason
        assert not Study.objects.filter(study_instance_uid=uid).exists()
        assert not Instance.objects.exists()
        assert _stored_files() == [] and _incoming_files() == []
        assert not priors.held_locally(uid)

        proxy.fault = None
        Prior.objects.filter(pk=prior.pk).update(next_attempt_at=timezone.now())
        assert priors.run_fetch(prior.pk) == pr.READY
    prior.refresh_from_db()
    assert prior.attempts == 2 and prior.reason == ""
    assert Study.objects.get(study_instance_uid=uid).instances.count() == 3
    assert len(_stored_files()) == 3 and _incoming_files() == []


def test_a_fetch_that_stored_part_of_the_study_is_not_taken_as_held(web_vna, broker, store_dir, routing_settings,
                                                                    tmp_path):
    """Some instances refused (a series the engine already indexes under another study: a Series
    Instance UID names one series of one study, PS3.3 C.7.3.1), the rest stored: holding part of
    the study is not holding it.  The next attempt fetches again (the instances stored come back
    as identical resends, answered as stored) and, the refusal standing, the prior fails with the
    reason once the attempts run out: never READY with instances missing."""
    routing_settings.TRANSFER_MAX_ATTEMPTS = 2
    uid, clash = generate_uid(), generate_uid()
    common = {"study_instance_uid": uid, "modality": "CT", "patient_id": "OLD7", "patient_name": "DOE^JON",
              "accession_number": "OLDPART1", "study_date": years_ago(1)}
    paths = write_study(tmp_path / "kept", 2, **common) + write_study(
        tmp_path / "refused", 1, series_instance_uid=clash, **common)
    assert storescu(web_vna.dicom_port, paths, called=web_vna.aet).returncode == 0
    other = Study.objects.create(study_instance_uid=generate_uid(), patient_id="X1", issuer_of_patient_id="HOSP",
                                 last_received_at=timezone.now())
    Series.objects.create(study=other, series_instance_uid=clash, modality="CT")
    vna = _stow_destination(f"{web_vna.url}/dicom-web")
    prior = _a_prior(vna, uid)

    assert priors.run_fetch(prior.pk) == pr.RETRYING
    prior.refresh_from_db()
    assert "2 instances stored, 1 refused (InstanceConflict" in prior.reason, prior.reason
    assert Study.objects.get(study_instance_uid=uid).instances.count() == 2
    assert priors.held_locally(uid)  # some of it is here ...

    Prior.objects.filter(pk=prior.pk).update(next_attempt_at=timezone.now())
    assert priors.run_fetch(prior.pk) == pr.FAILED  # ... which is not the study: fetched again, refused again
    prior.refresh_from_db()
    assert prior.attempts == 2 and prior.reason.startswith("gave up after 2 attempts: WADO-RS from")
    assert "2 instances stored, 1 refused" in prior.reason
    assert [c.to_status for c in StatusChange.objects.filter(entity="prior", object_id=prior.pk)] == [
        pr.IN_PROGRESS, pr.RETRYING, pr.IN_PROGRESS, pr.FAILED]


def test_the_database_lost_during_a_fetch_stores_nothing_and_the_study_is_fetched_again(
        web_vna, broker, store_dir, routing_settings, tmp_path):
    """The database goes away while the VNA's answer is on its way.  Every session ended and the
    server back at once (a restart, a failover): no instance indexed, no file left in the store or
    its incoming directory, the attempt retried with the reason.  Every session ended and the
    server gone: the row cannot be written either, so it stays IN PROGRESS under the worker's
    lease; once the lease has run out the sweep queues it again, and the next attempt, the
    database back, fetches the whole study."""
    import psycopg
    from django.db import connection
    from django.db.utils import Error as DjangoDatabaseError

    uid = prior_in(web_vna, tmp_path, patient_id="OLD7", modality="CT", years=1, n=3)
    db = connection.settings_dict
    real_port = db["PORT"]

    def end_every_session() -> None:
        with psycopg.connect(host=db["HOST"], port=real_port or 5432, user=db["USER"], dbname="postgres",
                             autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s AND pid <> pg_backend_pid()", (db["NAME"],))

    def and_stay_down() -> None:
        end_every_session()
        db["PORT"] = "1"  # a reconnection finds no database

    def nothing_held() -> None:
        assert Instance.objects.filter(study__study_instance_uid=uid).count() == 0
        assert _stored_files() == [] and _incoming_files() == []

    with FaultyDicomWeb(web_vna.url) as proxy:
        vna = _stow_destination(proxy.url)
        prior = _a_prior(vna, uid)

        proxy.before_answer = end_every_session
        assert priors.run_fetch(prior.pk) == pr.RETRYING
        prior.refresh_from_db()
        assert prior.reason.startswith(f"WADO-RS from {proxy.url}: 0 instances stored, then "), prior.reason
        nothing_held()

        proxy.before_answer = and_stay_down
        Prior.objects.filter(pk=prior.pk).update(next_attempt_at=timezone.now())
        try:
            with pytest.raises(DjangoDatabaseError):
                priors.run_fetch(prior.pk)
        finally:
            db["PORT"] = real_port
            connection.close()  # as the worker does after a task whose connection broke
        proxy.before_answer = None
        nothing_held()
        prior.refresh_from_db()
        assert prior.status == pr.IN_PROGRESS and prior.attempts == 2 and prior.lease_expires_at > timezone.now()
        assert priors.sweep() == 0  # a worker may still hold it
        assert priors.sweep(now=prior.lease_expires_at + dt.timedelta(seconds=1)) == 1  # its lease is over

        Prior.objects.filter(pk=prior.pk).update(lease_expires_at=timezone.now() - dt.timedelta(seconds=1))
        assert priors.run_fetch(prior.pk) == pr.READY
    prior.refresh_from_db()
    assert prior.attempts == 3 and priors.instances_held(uid) == 3 and len(_stored_files()) == 3


def test_an_answer_that_is_not_multipart_fails_at_once_and_stores_nothing(web_vna, broker, store_dir,
                                                                          routing_settings, tmp_path):
    uid = prior_in(web_vna, tmp_path, patient_id="OLD7", modality="CT", years=1)
    with FaultyDicomWeb(web_vna.url) as proxy:
        vna = _stow_destination(proxy.url)
        prior = _a_prior(vna, uid)
        proxy.fault = "html"  # an error page of something between the engine and the VNA

        assert priors.run_fetch(prior.pk) == pr.FAILED
    prior.refresh_from_db()
    assert prior.attempts == 1 and "is text/html, not multipart/related" in prior.reason, prior.reason
    assert not Study.objects.filter(study_instance_uid=uid).exists()
    assert _stored_files() == [] and _incoming_files() == []


def test_search_answers_of_other_patients_are_dropped_and_a_non_json_answer_is_a_failure(web_vna, routing_settings,
                                                                                         tmp_path):
    mine = prior_in(web_vna, tmp_path, patient_id="OLD7", modality="CT", years=1)
    prior_in(web_vna, tmp_path, patient_id="X99", modality="CT", years=1)
    rp = make_step(modality="CT").requested_procedure
    with FaultyDicomWeb(web_vna.url) as proxy:
        vna = _stow_destination(proxy.url)
        proxy.search_fault = "ignore-patient"  # the VNA answers with every patient's studies
        found, errors = priors.vna_candidates(rp, [("OLD7", "HOSP")])
        assert errors == [] and set(found) == {mine}

        proxy.search_fault = "not-json"
        found, errors = priors.vna_candidates(rp, [("OLD7", "HOSP")])
    assert found == {} and errors == [f"QIDO-RS answer from {vna.url} is not DICOM JSON"]
    trail.flush()
    outcomes = list(AuditRecord.records.filter(event_id=events.QUERY.value, actor="priors")
                    .order_by("id").values_list("outcome", flat=True))
    assert outcomes == [events.SUCCESS, events.SERIOUS_FAILURE]


def test_a_search_answered_in_pages_is_followed_to_its_end(web_vna, routing_settings, tmp_path):
    """A VNA that answers at most two matches per search and says so in a Warning (PS3.18 8.3.4):
    the next pages are asked for with ``offset`` until one says no more, so that no prior is missed
    because the VNA stopped early; a VNA that says "more" but ignores ``offset`` is asked once
    more, then the search ends with what it gave (not a loop)."""
    mine = {prior_in(web_vna, tmp_path, patient_id="OLD7", modality="CT", years=y) for y in (1, 1.5, 2, 3, 4)}
    rp = make_step(modality="CT").requested_procedure
    with FaultyDicomWeb(web_vna.url) as proxy:
        _stow_destination(proxy.url)
        proxy.search_fault = "page:2"

        found, errors = priors.vna_candidates(rp, [("OLD7", "HOSP")])
        assert errors == [] and set(found) == mine
        assert proxy.searches == 3  # 2 + 2 + 1

        proxy.search_fault, proxy.searches = "page-ignoring-offset:2", 0
        found, errors = priors.vna_candidates(rp, [("OLD7", "HOSP")])
    assert errors == [] and len(found) == 2 and set(found) < mine
    assert proxy.searches == 2
    trail.flush()
    answers = [r.detail["answers"] for r in AuditRecord.records.filter(event_id=events.QUERY.value, actor="priors")
               .order_by("id")]
    assert answers == [5, 2]


def test_two_fetches_of_one_study_at_once_store_it_once(web_vna, broker, store_dir, routing_settings, tmp_path):
    """Two orders of one patient choose the same prior and their fetches run at the same time:
    both end READY, each instance is stored and indexed once, nothing is left in .incoming."""
    import threading

    from django.db import connection

    uid = prior_in(web_vna, tmp_path, patient_id="OLD7", modality="CT", years=1, n=3)
    vna = _stow_destination(f"{web_vna.url}/dicom-web")
    rows = [_a_prior(vna, uid), _a_prior(vna, uid)]
    barrier = threading.Barrier(len(rows))

    def fetch(pk: int) -> None:
        try:
            barrier.wait(10)
            priors.run_fetch(pk)
        finally:
            connection.close()

    threads = [threading.Thread(target=fetch, args=(p.pk,)) for p in rows]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [Prior.objects.get(pk=p.pk).status for p in rows] == [pr.READY, pr.READY]
    assert Instance.objects.filter(study__study_instance_uid=uid).count() == 3
    assert len(_stored_files()) == 3 and _incoming_files() == []
