"""Patient changes reach a DICOM-only VNA (a real Orthanc configured as docs/dicom-conformance.md
says: "OverwriteInstances": true and docker/orthanc/patient-updates.lua) through a real Celery
worker: after an A08 sent over MLLP with a
new name, the study's instances are sent again with the corrected Patient Module attributes
(PS3.3 C.7.1.1) and Orthanc names the study's patient anew; after an A40 merging the patient
into another ID, Orthanc's PatientID for the study is the surviving one."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs.models import Transfer, VnaDestination
from pacs.models import transfers as tr
from tests.support.dicom import port
from tests.support.hl7 import adt_a08, adt_a40, send_mllp
from tests.support.orthanc import OrthancProcess
from tests.support.routing import complete_now, send_matched_study
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.socket, pytest.mark.django_db(transaction=True), pytest.mark.timeout(240)]

PATIENT_UPDATES_LUA = Path(__file__).resolve().parents[2] / "docker" / "orthanc" / "patient-updates.lua"


@pytest.fixture
def replacing_vna(engine, tmp_path):
    """Orthanc as a VNA that replaces an instance sent again (it keeps the first copy otherwise)
    and then rebuilds the patient's main tags from the stored instances (the script we ship)."""
    vna = OrthancProcess(tmp_path / "vna", engine_aet="PACS", engine_port=port(engine),
                         lua=PATIENT_UPDATES_LUA.read_text(), extra={"OverwriteInstances": True, "StableAge": 1})
    vna.start()
    try:
        yield vna
    finally:
        vna.stop()


def committed(transfer_id, worker) -> None:
    wait_for(lambda: Transfer.objects.get(pk=transfer_id).status == tr.COMMITTED, 90,
             message=f"transfer {transfer_id} committed", detail=lambda: (
                 f"{Transfer.objects.get(pk=transfer_id).__dict__}\nworker log:\n{worker.log()[-3000:]}"))


def test_a08_then_a40_reach_orthanc_as_resent_instances(engine, replacing_vna, sender, worker, listener, tmp_path):
    VnaDestination.objects.create(name="orthanc", kind=tr.KIND_DICOM, ae_title=replacing_vna.aet, host="127.0.0.1",
                                  port=replacing_vna.dicom_port)
    study, _ = send_matched_study(engine, tmp_path, 3)
    complete_now(study)
    committed(Transfer.objects.get(study=study).pk, worker)
    uid = study.study_instance_uid
    assert [s["PatientMainDicomTags"]["PatientName"] for s in replacing_vna.studies(uid)] == ["DOE^JOHN"]

    server = listener()
    ack = send_mllp(server.port, adt_a08("A08-OR-1", "P1", name="DOE^JOHANNA", birth_date="19750505", sex="F"))
    assert ack["msa_1"] == "AA"
    resend = Transfer.objects.get(study=study, patient_update=1)
    assert resend.patient_event == "A08" and resend.items.count() == 3
    committed(resend.pk, worker)
    # What Orthanc answers for the study (/tools/find, as QIDO-RS and C-FIND do): the new name,
    # once the study is stable again and its main tags rebuilt.
    wait_for(lambda: [s["PatientMainDicomTags"].get("PatientName") for s in replacing_vna.studies(uid)]
             == ["DOE^JOHANNA"], 30, message=f"Orthanc names the study's patient anew: {replacing_vna.studies(uid)}")
    tags = replacing_vna.instance_tags(resend.items.first().instance.sop_instance_uid)
    assert (tags["PatientName"], tags["PatientBirthDate"], tags["PatientSex"]) == ("DOE^JOHANNA", "19750505", "F")
    assert replacing_vna.count_instances() == 3  # replaced, not added

    ack = send_mllp(server.port, adt_a40("A40-OR-1", "P2", "P1", name="DOE^JOHANNA"))
    assert ack["msa_1"] == "AA"
    merged = Transfer.objects.get(study=study, patient_update=2)
    assert merged.patient_event == "A40"
    committed(merged.pk, worker)
    wait_for(lambda: [s["PatientMainDicomTags"].get("PatientID") for s in replacing_vna.studies(uid)] == ["P2"],
             30, message=f"Orthanc files the study under the surviving ID: {replacing_vna.studies(uid)}")
    tags = replacing_vna.instance_tags(merged.items.first().instance.sop_instance_uid)
    assert (tags["PatientID"], tags["IssuerOfPatientID"]) == ("P2", "HOSP")
    assert replacing_vna.count_instances() == 3
