"""The transfers page: states with reason, attempts and age, so that an operator sees why a study
has not reached the VNA; retry and cancel by administrators, recorded with who did it (a transfer
sent again or given up is a decision someone answers for)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone
from pydicom.uid import generate_uid

from pacs.models import Study, Transfer, VnaDestination
from pacs.models import images as im
from pacs.models import transfers as tr
from project.access import ADMINISTRATOR, RADIOLOGIST, TECHNOLOGIST
from ris.models import StatusChange
from ris.services.transitions import transition

pytestmark = pytest.mark.django_db


def login(client, name, *roles):
    user = User.objects.create_user(name, password="pw-For-Tests-1")
    for role in roles:
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    client.force_login(user)
    return user


@pytest.fixture
def rows():
    destination = VnaDestination.objects.create(name="main-vna", ae_title="VNA", host="h", port=1)
    out = {}
    for status in (tr.SCHEDULED, tr.RETRYING, tr.FAILED, tr.COMMITTED):
        study = Study.objects.create(study_instance_uid=generate_uid(), accession_number=f"ACC-{status}",
                                     last_received_at=timezone.now(), status=im.RECEIVING)
        t = Transfer.objects.create(study=study, destination=destination, batch=1, next_attempt_at=timezone.now(),
                                    attempts=3, reason=f"reason for {status}")
        if status != tr.SCHEDULED:
            Transfer.objects.filter(pk=t.pk).update(status=status)
        out[status] = Transfer.objects.get(pk=t.pk)
    return out


def test_page_lists_states_reason_attempts_and_age(client, rows):
    login(client, "admin", ADMINISTRATOR)
    page = client.get(reverse("imaging:transfers")).content.decode()
    for status in (tr.SCHEDULED, tr.RETRYING, tr.FAILED, tr.COMMITTED):
        assert f'data-status="{status}"' in page and f"reason for {status}" in page
    assert "main-vna" in page and "retrying (1)" in page
    failed_only = client.get(reverse("imaging:transfers") + "?status=FAILED").content.decode()
    assert "ACC-FAILED" in failed_only and "ACC-COMMITTED" not in failed_only


def _last_shown(response) -> str:
    """The last message the redirected page will show (the test renders no page, so the earlier
    ones are still stored)."""
    return [str(m) for m in get_messages(response.wsgi_request)][-1]


def test_retry_and_cancel_are_recorded_with_the_user(client, rows, django_capture_on_commit_callbacks):
    login(client, "root-admin", ADMINISTRATOR)
    failed = rows[tr.FAILED]
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(reverse("imaging:retry_transfer", args=[failed.pk]))
    assert response.status_code == 302 and len(callbacks) == 1
    assert _last_shown(response) == f"Transfer {failed.pk} queued again."
    failed.refresh_from_db()
    assert failed.status == tr.RETRYING and failed.attempts == 0
    retrying = rows[tr.RETRYING]
    response = client.post(reverse("imaging:cancel_transfer", args=[retrying.pk]))
    assert _last_shown(response) == f"Transfer {retrying.pk} canceled."
    changes = StatusChange.objects.filter(entity="transfer").values_list("object_id", "to_status", "actor")
    assert (failed.pk, tr.RETRYING, "root-admin") in changes
    assert (retrying.pk, tr.CANCELED, "root-admin") in changes
    # A committed transfer cannot be canceled: the page says so, nothing changes.
    committed = rows[tr.COMMITTED]
    response = client.post(reverse("imaging:cancel_transfer", args=[committed.pk]))
    assert response.status_code == 302 and "canceled." not in _last_shown(response)
    assert Transfer.objects.get(pk=committed.pk).status == tr.COMMITTED


def test_roles(client, rows):
    tech = login(client, "tech", TECHNOLOGIST)
    page = client.get(reverse("imaging:transfers"))
    assert page.status_code == 200 and "<button>Retry</button>" not in page.content.decode()
    assert client.post(reverse("imaging:retry_transfer", args=[rows[tr.FAILED].pk])).status_code == 403
    assert client.post(reverse("imaging:cancel_transfer", args=[rows[tr.FAILED].pk])).status_code == 403
    assert tech.username == "tech"
    login(client, "rad", RADIOLOGIST)
    assert client.get(reverse("imaging:transfers")).status_code == 403


def test_status_changes_only_through_the_table(rows):
    from ris.errors import InvalidTransition

    with pytest.raises(InvalidTransition):
        transition(rows[tr.COMMITTED], tr.RETRYING, entity="transfer", cause="x")


def test_priors_page_filters_by_state_like_the_transfers_page(client):
    from pacs.models import Prior
    from pacs.models import priors as pr
    from tests.factories import make_step

    rp = make_step().requested_procedure
    for n, status in enumerate((pr.SCHEDULED, pr.FAILED, pr.FAILED, pr.READY)):
        Prior.objects.create(requested_procedure=rp, study_instance_uid=f"2.25.9{n}", accession_number=f"PRI-{n}",
                             status=status, reason=f"reason {n}")
    login(client, "tech", TECHNOLOGIST)
    everything = client.get(reverse("imaging:priors")).content.decode()
    assert all(f"PRI-{n}" in everything for n in range(4))
    assert "failed (2)" in everything and "ready (1)" in everything and "retrying (0)" in everything
    failed = client.get(reverse("imaging:priors") + "?status=FAILED").content.decode()
    assert failed.count('data-status="FAILED"') == 2 and 'data-status="READY"' not in failed
    assert "failed (2)" in failed  # the counts stay those of every state
    unknown = client.get(reverse("imaging:priors") + "?status=NOSUCH").content.decode()
    assert unknown.count("<tr data-status=") == 4
