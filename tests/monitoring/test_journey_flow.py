"""One accession's journey driven through the whole flow with the real parts: an ORM^O01 through
hl7gateway.intake.handle_payload; the MWL answered to dcmtk's findscu; MPPS N-CREATE/N-SET and
C-STORE (dcmtk's storescu) to the engine's AE on an ephemeral port; completion; routing to a real
Orthanc VNA with storage commitment; a claim and a signed final report; the ORU^R01 delivered to
one real MLLP sink (AA) while the other withholds its ACK.  The journey page shows every hand-off
in order, and, with time moved forward, the withheld ACK as overdue."""

from __future__ import annotations

import datetime as dt
import re
from unittest import mock

import pytest
from django.test import Client, override_settings
from django.utils import timezone
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from hl7gateway.intake import handle_payload
from hl7gateway.models import OutboundMessage
from hl7gateway.outbox import delivery
from monitoring import journey
from monitoring.records import WorklistQueryResult
from pacs.dimse import db
from pacs.models import Study, Transfer, VnaDestination
from pacs.models import images as im
from pacs.models import transfers as tr
from pacs.services.routing import transfers
from project.access import ADMINISTRATOR
from ris.models import RequestedProcedure
from tests.factories import oru as h
from tests.factories import user
from tests.support.dicom import findscu, port
from tests.support.hl7 import ack_fields, fixture, with_control_id
from tests.support.mllp_sink import SILENT, MLLPSink
from tests.support.mpps import completion_dataset, n_create_dataset
from tests.support.orthanc import storescu, write_study
from tests.support.waiting import wait_for
from worklist.services import claim_study

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

ACCESSION = "EA100001"


def _order_then_mwl(engine, tmp_path):
    with override_settings(HL7_SENDERS="EPIC^SYNTH_HOSP@10.1.1.1"):  # a declared sender
        ack = handle_payload(with_control_id(fixture("epic_orm_o01_nw.hl7"), "JRN-0001"), peer="10.1.1.1:40000")
    assert ack_fields(ack)["msa_1"] == "AA"
    rp = RequestedProcedure.objects.get(accession_number=ACCESSION)
    proc, items = findscu(engine, [f"AccessionNumber={ACCESSION}", "ScheduledProcedureStepSequence"],
                          tmp_path / "mwl", aet="CT1")
    assert proc.returncode == 0, proc.stderr
    assert [i.AccessionNumber for i in items] == [ACCESSION]
    return rp


def _perform(engine, tmp_path, rp):
    """MPPS N-CREATE, the images by C-STORE, MPPS N-SET COMPLETED listing them -> study complete."""
    step = rp.steps.get()
    ds_set, uids = completion_dataset(n_images=2)
    series_uid = ds_set.PerformedSeriesSequence[0].SeriesInstanceUID
    paths = []
    for n, uid in enumerate(uids, start=1):
        (path,) = write_study(tmp_path / f"img{n}", 1, study_instance_uid=rp.study_instance_uid,
                              series_instance_uid=series_uid, accession_number=ACCESSION, patient_id="E1000001",
                              patient_name="Testpatient^Anna^Maria")
        ds = dcmread(path)
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    ae = AE(ae_title="CT1")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    assoc = ae.associate("127.0.0.1", port(engine), ae_title="PACS")
    assert assoc.is_established
    try:
        mpps_uid = "2.25.424242" + str(rp.pk)
        status, _ = assoc.send_n_create(n_create_dataset(step), ModalityPerformedProcedureStep, mpps_uid)
        assert status.Status == 0
        proc = storescu(port(engine), paths, calling="CT1")
        assert proc.returncode == 0, proc.stderr
        status, _ = assoc.send_n_set(ds_set, ModalityPerformedProcedureStep, mpps_uid)
        assert status.Status == 0
    finally:
        assoc.release()
    study = Study.objects.get(study_instance_uid=rp.study_instance_uid)
    assert study.status == im.COMPLETE
    return study


def _kinds_in_order(steps) -> list[str]:
    """The hand-offs (without the status trail) as kind/label keys, in timeline order."""
    return [s.label for s in steps if s.kind != "status"]


def test_journey_shows_every_hand_off_in_order_and_a_withheld_ack_as_overdue(engine, orthanc, routing_settings,
                                                                             tmp_path, settings):
    settings.MWL_FILTER_BY_CALLING_AE = False
    settings.HL7_ORU_BATCH_SIZE = 1
    settings.JOURNEY_ORU_ACK_OVERDUE_MINUTES = 30
    VnaDestination.objects.create(name="vna", kind=tr.KIND_DICOM, ae_title=orthanc.aet, host="127.0.0.1",
                                  port=orthanc.dicom_port)
    with MLLPSink() as ehr_sink, MLLPSink(mode=SILENT) as billing_sink:
        ehr = h.destination("ehr", ehr_sink.port)
        billing = h.destination("billing", billing_sink.port, ack_timeout_seconds=0.5)

        rp = _order_then_mwl(engine, tmp_path)
        db.flush()  # the MWL record is written after the answer
        assert WorklistQueryResult.objects.filter(scheduled_step=rp.steps.get(), calling_ae_title="CT1").exists()
        study = _perform(engine, tmp_path, rp)

        transfer = Transfer.objects.get(study=study)
        transfers.run_transfer(transfer.pk)
        wait_for(lambda: Transfer.objects.get(pk=transfer.pk).status == tr.COMMITTED, 60, message="committed")

        rad = h.radiologist("rad1")
        assert claim_study(rp.pk, rad).won
        h.sign_report(rp, rad)
        ehr_row = OutboundMessage.objects.get(destination=ehr)
        billing_row = OutboundMessage.objects.get(destination=billing)
        delivery.deliver(ehr_row.pk)
        ehr_sink.wait_for(1)
        delivery.deliver(billing_row.pk)  # the sink keeps silent: no ACK
        billing_sink.wait_for(1)
        ehr_row.refresh_from_db()
        billing_row.refresh_from_db()
        assert ehr_row.status == "DELIVERED" and billing_row.status == "PENDING"

    limits = journey.thresholds()
    steps = journey.timeline(journey.collect(ACCESSION), now=timezone.now(), **limits)
    labels = _kinds_in_order(steps)
    sps_id = rp.steps.get().scheduled_procedure_step_id
    expected = [
        "ORM^O01 received",
        f"step {sps_id} scheduled (CT)",
        f"MWL item returned (step {sps_id})",
        "MPPS N-CREATE: in progress",
        "instances received (first)",
        "matched to the order",
        "MPPS N-SET: completed",
        "study complete",
        "transfer to VNA vna queued (batch 1)",
        "committed by VNA vna",
        "claimed for reading",
        "report version 1 signed (final)",
    ]
    assert labels[:len(expected)] == expected, labels
    tail = labels[len(expected):]
    # Both ORUs queued in the signing transaction; the EHR's acknowledged; billing's still awaited.
    assert set(tail[:2]) == {"ORU^R01 (F) queued for ehr", "ORU^R01 (F) queued for billing"}
    assert "ORU^R01 acknowledged by ehr" in tail
    assert tail.index("ORU^R01 attempt 1 to ehr") < tail.index("ORU^R01 acknowledged by ehr")
    assert tail[-1] == "ORU^R01 acknowledgement from billing"
    by_label = {s.label: s for s in steps}
    assert by_label["ORM^O01 received"].peer == "EPIC^SYNTH_HOSP"
    assert by_label["ORM^O01 received"].outcome.startswith("APPLIED, ACK AA (MSH-10 JRN-0001)")
    assert by_label[f"MWL item returned (step {sps_id})"].peer == "CT1"
    assert by_label["MPPS N-CREATE: in progress"].peer == "CT1"
    assert by_label["instances received (first)"].peer == "CT1"
    assert by_label["instances received (first)"].outcome.startswith("2 instance(s)")
    assert by_label["claimed for reading"].peer == "rad1"
    assert "TIMEOUT" in by_label["ORU^R01 attempt 1 to billing"].outcome
    assert not any(s.overdue for s in steps)  # nothing is late yet
    assert any(s.kind == "status" and "study RECEIVING -> COMPLETE" in s.label for s in steps)

    # The page, as an administrator, now and 31 minutes later (time moved forward).
    admin = Client()
    admin.force_login(user("olga", ADMINISTRATOR))
    html = admin.get(f"/monitoring/journey/?accession={ACCESSION}").content.decode()
    assert 'class="flag">OVERDUE' not in html and "MWL item returned" in html and "committed by VNA vna" in html
    later = timezone.now() + dt.timedelta(minutes=31)
    with mock.patch("monitoring.console_views.timezone.now", return_value=later):  # the clock, not our code
        html = admin.get(f"/monitoring/journey/?accession={ACCESSION}").content.decode()
    overdue_rows = re.findall(r'<tr class="step [^"]*overdue">(.*?)</tr>', html, re.S)
    assert len(overdue_rows) == 1
    assert "ORU^R01 acknowledgement from billing" in overdue_rows[0]
    assert "never acknowledged" in overdue_rows[0]
    # Looked up by patient ID: the same accession (and the order's second one) are listed.
    html = admin.get("/monitoring/journey/?patient_id=E1000001").content.decode()
    assert f'data-accession="{ACCESSION}"' in html and 'data-accession="EA100002"' in html
