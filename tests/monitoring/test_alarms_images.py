"""Alarms on images: a study sent with a mistyped accession number sits unmatched past the
threshold (time moved forward) and a person's link clears it; a VNA that refuses connections
fails a transfer (alarm opens) and the operator's retry clears it.  Images go through the real
DICOM AE (pynetdicom as the modality), the transfer through pacs.services.routing."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from hl7gateway.intake import handle_payload
from monitoring import services
from monitoring.models import TRANSFER_FAILED, UNMATCHED_STUDY, Alarm
from pacs.models import Study, Transfer, VnaDestination
from pacs.models import transfers as tr
from pacs.services import completion, order_matching
from pacs.services.routing import actions, transfers
from ris.models import RequestedProcedure
from tests.factories import rule
from tests.support.dicom import new_uid, port, pynetdicom_store
from tests.support.hl7 import ack_fields, fixture
from tests.support.net import free_port
from tests.support.orthanc import make_instance

pytestmark = pytest.mark.django_db(transaction=True)


def send_study(engine, accession: str) -> Study:  # noqa: F811 - pytest fixture passed in
    ds = make_instance(study_instance_uid=new_uid(), accession_number=accession, patient_id="E1000001",
                       issuer_of_patient_id="SYNTHMRN", patient_name="Testpatient^Anna^Maria")
    assert pynetdicom_store(port(engine), [ds]) == [0x0000]
    return Study.objects.get(study_instance_uid=ds.StudyInstanceUID)


def test_unmatched_study_opens_then_link_clears(engine, mail_settings, webhook, mailoutbox):  # noqa: F811
    assert ack_fields(handle_payload(fixture("epic_orm_o01_nw.hl7")))["msa_1"] == "AA"
    rule(UNMATCHED_STUDY, webhook_url=webhook.url, minutes=30)
    study = send_study(engine, "EA1OOOO1")  # mistyped: letter O for zero
    assert study.requested_procedure_id is None
    start = timezone.now()
    assert services.evaluate(start + dt.timedelta(minutes=10))["opened"] == 0
    assert services.evaluate(start + dt.timedelta(minutes=31))["opened"] == 1
    assert services.evaluate(start + dt.timedelta(minutes=40))["opened"] == 0
    alarm = Alarm.objects.get()
    assert alarm.interface_key == "MODALITY" and "1 unmatched" in alarm.message
    assert len(mailoutbox) == 1 and webhook.events() == ["open"]
    assert "Testpatient" not in mailoutbox[0].body and "EA1OOOO1" not in mailoutbox[0].body

    rp = RequestedProcedure.objects.get(accession_number="EA100001")
    order_matching.link_study(study.pk, rp.pk, actor="tech1", note="accession mistyped at the modality")
    assert services.evaluate(start + dt.timedelta(minutes=41))["cleared"] == 1
    assert len(mailoutbox) == 2 and webhook.events() == ["open", "clear"]


def test_failed_vna_transfer_opens_then_retry_clears(engine, mail_settings, webhook, mailoutbox, settings):  # noqa: F811
    settings.TRANSFER_MAX_ATTEMPTS = 1
    settings.STUDY_QUIET_PERIOD_SECONDS = 1
    VnaDestination.objects.create(name="vna-main", kind=tr.KIND_DICOM, ae_title="VNA", host="127.0.0.1",
                                  port=free_port())  # refuses connections
    rule(TRANSFER_FAILED, "vna-main", webhook_url=webhook.url)
    assert ack_fields(handle_payload(fixture("epic_orm_o01_nw.hl7")))["msa_1"] == "AA"
    study = send_study(engine, "EA100001")
    assert completion.check_study(study.pk, now=timezone.now() + dt.timedelta(minutes=1))
    transfer = Transfer.objects.get(study=study)
    assert transfers.run_transfer(transfer.pk) == tr.FAILED
    assert services.evaluate()["opened"] == 1
    assert services.evaluate()["opened"] == 0
    alarm = Alarm.objects.get()
    assert alarm.interface_key == "vna-main" and "1 VNA transfer(s) to vna-main failed" in alarm.message
    assert len(mailoutbox) == 1 and webhook.events() == ["open"]

    actions.retry(transfer.pk, actor="admin1")  # the operator retries: no failed transfer stands
    assert services.evaluate()["cleared"] == 1
    assert len(mailoutbox) == 2 and webhook.events() == ["open", "clear"]
