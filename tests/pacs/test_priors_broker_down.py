"""The search for a new order's priors when the Celery broker (Redis) is down at order time: the
order is still acknowledged AA (the HL7 listener ``manage.py run_mllp`` with a broker URL on a
closed port), the search is recorded with the order, and once the broker is back the sweep
queues it and a real worker finds the prior in a real Orthanc VNA."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.utils import timezone
from pydicom.uid import generate_uid

from pacs.models import Prior, PriorSearch, VnaDestination
from pacs.models import transfers as tr
from pacs.services import prior_searches, priors
from ris.models import RequestedProcedure
from tests.factories import make_step
from tests.support.hl7 import new_order, send_mllp
from tests.support.net import free_port
from tests.support.orthanc import storescu, write_study
from tests.support.postgres import database_url
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _run_mllp(env_extra: dict) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, **env_extra, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "run_mllp", "--host", "127.0.0.1", "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise AssertionError(f"run_mllp did not start: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, int(line.split(":")[-1].split()[0])


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_an_order_taken_while_the_broker_is_down_gets_its_priors_once_the_broker_is_back(
    engine, orthanc, routing_settings, worker, tmp_path
):
    VnaDestination.objects.create(
        name="orthanc", kind=tr.KIND_DICOM, ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port
    )
    prior_uid = generate_uid()
    paths = write_study(
        tmp_path / "prior",
        1,
        study_instance_uid=prior_uid,
        modality="CT",
        patient_id="E1000001",
        issuer_of_patient_id="SYNTHMRN",
        study_date=timezone.localdate() - dt.timedelta(days=400),
    )
    assert storescu(orthanc.dicom_port, paths, called=orthanc.aet).returncode == 0

    proc, port = _run_mllp(
        {
            "DATABASE_URL": database_url(),
            "VAR_DIR": str(tmp_path / "var"),
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
        }
    )  # nothing listens there
    try:
        started = time.monotonic()
        ack = send_mllp(port, new_order("BROKERDOWN1"))
        took = time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(10)
    assert ack["msa_1"] == "AA", ack
    assert took < 15, f"the ACK waited {took:.1f} s for the broker"
    procedures = list(RequestedProcedure.objects.order_by("pk").values_list("pk", flat=True))
    assert len(procedures) == 2
    searches = PriorSearch.objects.filter(requested_procedure_id__in=procedures, finished_at__isnull=True)
    assert searches.count() == 2  # recorded with the order although nothing could be queued
    time.sleep(2)  # the worker is up on the real broker: nothing reached it
    assert not Prior.objects.exists()

    # The broker is back (this process's broker is the worker's): the periodic sweep queues them.
    assert prior_searches.sweep(now=timezone.now() + dt.timedelta(minutes=1)) == 2
    wait_for(
        lambda: (
            Prior.objects.filter(study_instance_uid=prior_uid).count() == 2
            and not PriorSearch.objects.filter(finished_at__isnull=True).exists()
        ),
        90,
        message="priors found for both procedures",
        detail=lambda: worker.log()[-3000:],
    )
    assert set(Prior.objects.values_list("requested_procedure_id", flat=True)) == set(procedures)
    assert prior_searches.sweep(now=timezone.now() + dt.timedelta(minutes=5)) == 0  # finished: not again


@pytest.mark.django_db
def test_the_sweep_queues_unfinished_searches_after_the_grace_a_bounded_number_of_times(broker, settings):
    settings.PRIORS_ENABLED, settings.TRANSFER_MAX_ATTEMPTS = True, 2
    due, postponed, done = (make_step().requested_procedure for _ in range(3))
    now = timezone.now()
    PriorSearch.objects.bulk_create(
        [
            PriorSearch(requested_procedure=due, next_attempt_at=now - dt.timedelta(seconds=31)),
            PriorSearch(requested_procedure=postponed, next_attempt_at=now - dt.timedelta(seconds=31)),
            PriorSearch(requested_procedure=done, next_attempt_at=now - dt.timedelta(minutes=9), finished_at=now),
        ]
    )
    prior_searches.postpone(postponed.pk, 120)  # a retry of the task is queued two minutes ahead

    assert prior_searches.sweep(now=now) == 1
    assert broker.llen("celery") == 1  # one message on the real broker's default queue
    assert prior_searches.sweep(now=now) == 0  # queued just now: not again within the grace
    later = now + dt.timedelta(minutes=3)
    assert prior_searches.sweep(now=later) == 2  # the first once more, the postponed one now due
    assert prior_searches.sweep(now=later + dt.timedelta(minutes=1)) == 1  # the first reached its bound
    assert dict(PriorSearch.objects.values_list("requested_procedure_id", "requeued")) == {
        due.pk: 2,
        postponed.pk: 2,
        done.pk: 0,
    }
    assert prior_searches.sweep(now=later + dt.timedelta(minutes=5)) == 0
    assert broker.llen("celery") == 4


@pytest.mark.django_db
def test_choosing_the_priors_finishes_the_search(settings, broker):
    settings.PRIORS_ENABLED, settings.VNA_DESTINATIONS = True, ""
    rp = make_step().requested_procedure
    prior_searches.queue([rp.pk])
    search = PriorSearch.objects.get(requested_procedure=rp)
    assert search.finished_at is None
    priors.find_priors(rp.pk)
    search.refresh_from_db()
    assert search.finished_at is not None


@pytest.mark.django_db
def test_recording_the_searches_costs_an_order_one_statement(settings):
    """The searches of every procedure of an order are one INSERT in the order's transaction."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from hl7gateway.mapping import map_message
    from hl7gateway.parsing import parse
    from ris import auditing
    from ris.services import orders

    def place(control_id: str, *, priors_enabled: bool) -> tuple[int, list[int]]:
        settings.PRIORS_ENABLED = priors_enabled
        cmd = map_message(parse(new_order(control_id)))[0]
        with auditing.collecting(), CaptureQueriesContext(connection) as queries:
            effect = orders.place_order(cmd)
        return len(queries.captured_queries), effect["procedures"]

    place("STMT0", priors_enabled=False)  # the patient is known from now on
    without, _ = place("STMT1", priors_enabled=False)
    with_searches, procedures = place("STMT2", priors_enabled=True)
    assert with_searches == without + 1
    assert PriorSearch.objects.filter(requested_procedure_id__in=procedures).count() == 2
