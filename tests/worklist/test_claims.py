"""Claims against real PostgreSQL: one active claim per study, races, expiry, release."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from project.access import ADMINISTRATOR, RADIOLOGIST, RESIDENT, TECHNOLOGIST
from tests.factories import reading as f
from worklist import services
from worklist.models import ReadingClaim


@pytest.mark.django_db
def test_database_refuses_a_second_active_claim():
    rp = f.study()
    a, b = f.user("rad_a", RADIOLOGIST), f.user("rad_b", RADIOLOGIST)
    now = timezone.now()
    ReadingClaim.objects.create(requested_procedure=rp, user=a, claimed_at=now, last_activity_at=now)
    with pytest.raises(IntegrityError), transaction.atomic():
        ReadingClaim.objects.create(requested_procedure=rp, user=b, claimed_at=now, last_activity_at=now)
    # A released claim does not count: a new one may be inserted.
    ReadingClaim.objects.filter(user=a).update(released_at=now, release_reason=ReadingClaim.RELEASED)
    ReadingClaim.objects.create(requested_procedure=rp, user=b, claimed_at=now, last_activity_at=now)


@pytest.mark.django_db
def test_claim_then_other_sees_holder_and_release():
    rp = f.study()
    a = f.user("rad_a", RADIOLOGIST, first_name="Ann", last_name="Alpha")
    b = f.user("rad_b", RADIOLOGIST)
    first = services.claim_study(rp.pk, a)
    assert first.won and first.claim.user == a
    again = services.claim_study(rp.pk, a)  # re-opening keeps the same claim
    assert again.won and again.claim.pk == first.claim.pk
    lost = services.claim_study(rp.pk, b)
    assert not lost.won and lost.claim.user == a
    assert services.release_claim(rp.pk, b) is False  # not b's claim
    assert services.release_claim(rp.pk, a) is True
    assert services.claim_study(rp.pk, b).won


@pytest.mark.django_db
def test_roles_for_claims_and_forced_release():
    rp = f.study()
    tech = f.user("tech", TECHNOLOGIST)
    admin = f.user("admin1", ADMINISTRATOR)
    res = f.user("res", RESIDENT)
    with pytest.raises(services.ClaimDenied):
        services.claim_study(rp.pk, tech)
    assert services.claim_study(rp.pk, res).won
    with pytest.raises(services.ClaimDenied):
        services.release_claim(rp.pk, tech, force=True)
    assert services.release_claim(rp.pk, admin, force=True)
    claim = ReadingClaim.objects.get(requested_procedure=rp)
    assert claim.release_reason == ReadingClaim.FORCED and claim.released_by == admin


@pytest.mark.django_db
def test_study_not_ready_cannot_be_claimed():
    rp = f.study(ready=False)
    with pytest.raises(services.NotReadyForReading):
        services.claim_study(rp.pk, f.user("rad", RADIOLOGIST))


@pytest.mark.django_db
def test_idle_claim_expires(settings):
    settings.READING_CLAIM_TIMEOUT_MINUTES = 10
    rp = f.study()
    a, b = f.user("rad_a", RADIOLOGIST), f.user("rad_b", RADIOLOGIST)
    claim = services.claim_study(rp.pk, a).claim
    # 9 minutes idle: still held.
    ReadingClaim.objects.filter(pk=claim.pk).update(last_activity_at=timezone.now() - dt.timedelta(minutes=9))
    assert not services.claim_study(rp.pk, b).won
    assert services.touch_claim(rp.pk, a)
    # 11 minutes idle: expired, b wins, a's claim is closed as EXPIRED.
    ReadingClaim.objects.filter(pk=claim.pk).update(last_activity_at=timezone.now() - dt.timedelta(minutes=11))
    assert services.active_claim(rp.pk) is None
    assert not services.touch_claim(rp.pk, a)
    assert services.claim_study(rp.pk, b).won
    claim.refresh_from_db()
    assert claim.release_reason == ReadingClaim.EXPIRED and claim.released_at is not None


@pytest.mark.django_db
def test_sweep_expires_idle_claims(settings):
    settings.READING_CLAIM_TIMEOUT_MINUTES = 5
    a = f.user("rad_a", RADIOLOGIST)
    old, fresh = f.study(), f.study()
    c1 = services.claim_study(old.pk, a).claim
    services.claim_study(fresh.pk, a)
    ReadingClaim.objects.filter(pk=c1.pk).update(last_activity_at=timezone.now() - dt.timedelta(minutes=6))
    from worklist.tasks import expire_idle_claims  # the periodic Celery task, run in-process

    assert expire_idle_claims() == 1
    assert expire_idle_claims() == 0  # idempotent
    assert ReadingClaim.objects.filter(released_at__isnull=True).count() == 1
    assert settings.CELERY_BEAT_SCHEDULE["worklist.expire_idle_claims"]["task"] == "worklist.expire_idle_claims"


@pytest.mark.django_db(transaction=True)
def test_claim_race_two_connections_one_winner():
    """Two radiologists, two threads (two PostgreSQL connections), released at the same instant."""
    users = [f.user("race_a", RADIOLOGIST), f.user("race_b", RADIOLOGIST)]
    for _round in range(5):
        rp = f.study()
        barrier = threading.Barrier(2)
        results, errors = [None, None], []

        def worker(i, barrier=barrier, results=results, errors=errors, rp=rp):
            try:
                barrier.wait()
                results[i] = services.claim_study(rp.pk, users[i])
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        winners = [r for r in results if r.won]
        assert len(winners) == 1
        loser = next(r for r in results if not r.won)
        assert loser.claim.user == winners[0].claim.user
        assert ReadingClaim.objects.filter(requested_procedure=rp, released_at__isnull=True).count() == 1


@pytest.mark.django_db
def test_mark_ready_is_idempotent_and_keeps_time_waiting():
    rp = f.study(ready=False, priority="ROUTINE")
    t0 = timezone.now() - dt.timedelta(hours=2)
    item = services.mark_ready_for_reading(rp.pk, ready_at=t0)
    rp.requested_procedure_priority = "STAT"
    rp.save()
    again = services.mark_ready_for_reading(rp.pk)
    assert again.pk == item.pk and again.ready_at == t0
    assert again.priority_rank == 0 and again.requested_procedure_priority == "STAT"
    assert again.patient_id.startswith("MRN") and again.modality == "CT"
    assert again.patient_name_key.startswith("TEST PATIENT")


@pytest.mark.django_db
def test_study_reported_before_it_was_ready_enters_the_list_with_its_status():
    from ris.services import reports

    rp = f.study(ready=False)
    reports.sign(rp.pk, f.user("rad", RADIOLOGIST), "FINAL", findings="Dictated before the images were complete.")
    item = services.mark_ready_for_reading(rp.pk)
    assert item.report_status == "FINAL" and item.is_read
