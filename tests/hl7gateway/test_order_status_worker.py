"""Order status end to end (IHE RAD-3 after RAD-6/RAD-7 and RAD-8): the engine's DICOM listener
with pynetdicom as the modality's MPPS SCU and dcmtk's storescu sending the images, a REAL Celery
worker process (``celery -A project worker -B``) delivering to a real MLLP sink (the EHR).

The EHR learns, in this order and once each: the exam started (ORM^O01 ORC-5 IP), the study is
complete (CM), the report is final (CM with OBR-25 F), then gets the ORU^R01."""

from __future__ import annotations

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from hl7gateway.models import OutboundMessage
from pacs.models import Study
from pacs.models import images as im
from tests.factories import make_patient, make_step
from tests.factories import oru as h
from tests.support.celery_worker import oru_worker as Worker
from tests.support.dicom import port
from tests.support.mpps import completion_dataset, n_create_dataset
from tests.support.orthanc import storescu, write_study
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def worker(tmp_path, broker):
    w = Worker(tmp_path, "osc").start()
    yield w
    w.stop()


def images_listed_by(ds_set, rp, tmp_path) -> list:
    """One file per instance the N-SET lists, in its series, for dcmtk's storescu."""
    series = ds_set.PerformedSeriesSequence[0]
    paths = []
    for n, ref in enumerate(series.ReferencedImageSequence, start=1):
        (path,) = write_study(tmp_path / f"i{n}", 1, study_instance_uid=rp.study_instance_uid,
                              series_instance_uid=series.SeriesInstanceUID, accession_number=rp.accession_number,
                              patient_id="P1", patient_name="DOE^JOHN")
        ds = dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = ref.ReferencedSOPInstanceUID
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_mpps_images_and_final_report_tell_the_ehr_in_order(engine, worker, sink, tmp_path, settings):
    settings.VNA_DESTINATIONS = ""  # no VNA here: completion schedules no transfer
    h.destination("ehr", sink.port, hl7_version="2.3.1", sends_order_status=True)
    step = make_step(make_patient("DOE^JOHN", "P1"), accession="ACCOSC1", modality="CT", station="CT1")
    rp = step.requested_procedure

    modality = AE(ae_title="CT1")
    modality.add_requested_context(ModalityPerformedProcedureStep)
    assoc = modality.associate("127.0.0.1", port(engine), ae_title="PACS")
    assert assoc.is_established
    mpps_uid = generate_uid()
    status, _ = assoc.send_n_create(n_create_dataset(step), ModalityPerformedProcedureStep, mpps_uid)
    assert status.Status == 0
    wait_until(lambda: len(sink.received) == 1, 30, "the IP status at the EHR", worker)
    assert (sink.received[0].segment("MSH")[9], sink.received[0].segment("ORC")[1],
            sink.received[0].segment("ORC")[5]) == ("ORM^O01", "SC", "IP")

    ds_set, _ = completion_dataset(n_images=2)
    assert storescu(port(engine), images_listed_by(ds_set, rp, tmp_path)).returncode == 0
    status, _ = assoc.send_n_set(ds_set, ModalityPerformedProcedureStep, mpps_uid)
    assert status.Status == 0
    assoc.release()
    assert Study.objects.get(study_instance_uid=rp.study_instance_uid).status == im.COMPLETE
    wait_until(lambda: len(sink.received) == 2, 30, "the CM status (study complete) at the EHR", worker)

    h.sign_report(rp, h.radiologist())
    wait_until(lambda: len(sink.received) == 4, 30, "the final report's status and ORU^R01", worker)
    rows = list(OutboundMessage.objects.order_by("id"))
    assert sink.control_ids() == [r.message_control_id for r in rows]  # once each, in the order caused
    assert [m.segment("MSH")[9] for m in sink.received] == ["ORM^O01", "ORM^O01", "ORM^O01", "ORU^R01"]
    assert [m.segment("ORC")[5] for m in sink.received[:3]] == ["IP", "CM", "CM"]
    assert [m.segment("OBR")[18] for m in sink.received] == ["ACCOSC1"] * 4
    assert sink.received[2].segment("OBR")[25] == "F"
    wait_until(lambda: set(OutboundMessage.objects.values_list("status", flat=True)) == {"DELIVERED"}, 30,
               "every message delivered", worker)
