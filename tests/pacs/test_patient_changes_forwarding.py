"""Patient changes reach the archive (IHE RAD-12): an A08 or A40 received over MLLP for a patient
whose studies are already in a VNA is forwarded -- as ADT^A08 / ADT^A40 through the HL7 outbox to
a VNA that takes HL7 (here a real MLLP sink answering AA), as a re-send transfer to a DICOM-only
VNA -- and studies not yet in a VNA are not forwarded (they leave later with the current data).
Delivery is called in-process as the Celery task calls it; the DICOM re-send against a real
Orthanc is in test_patient_changes_orthanc.py."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import transaction
from django.utils import timezone

from audit import trail
from audit.models import AuditRecord
from hl7gateway import conformance
from hl7gateway.models import OutboundMessage
from hl7gateway.models.outbound import ADT, DELIVERED
from hl7gateway.outbox import delivery
from pacs.models import Transfer, VnaDestination
from pacs.models import images as im
from pacs.models import transfers as tr
from pacs.services.routing import archive
from project.access import ADMINISTRATOR
from project.auditing import events
from ris.services.transitions import transition
from tests.factories import make_patient, make_step, user, vna_study
from tests.support.hl7 import adt_a08, adt_a40, send_mllp
from tests.support.mllp_sink import MLLPSink

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sink():
    with MLLPSink() as s:
        yield s


def adt_vna(sink) -> VnaDestination:
    return VnaDestination.objects.create(name="vna-with-hl7", ae_title="VNA", host="127.0.0.1", port=1,
                                         adt_host="127.0.0.1", adt_port=sink.port)


def dicom_vna() -> VnaDestination:
    return VnaDestination.objects.create(name="vna-dicom-only", ae_title="VNA2", host="127.0.0.1", port=1)


def study_of(patient, destination, **kwargs):
    return vna_study(make_step(patient).requested_procedure, destination, **kwargs)


def test_a08_then_a40_reach_the_adt_vna_once_in_order(listener, sink, store_dir, settings, client):
    vna = adt_vna(sink)
    study_of(make_patient("OLDNAME^ANNA", "P7"), vna)
    study_of(make_patient("OLDNAME^ANA", "P9"), vna)
    server = listener()
    assert send_mllp(server.port, adt_a08("A08-1", "P7", name="NEWNAME^ANNA", birth_date="19800215",
                                          sex="F"))["msa_1"] == "AA"
    assert send_mllp(server.port, adt_a40("A40-1", "P7", "P9", name="NEWNAME^ANNA"))["msa_1"] == "AA"

    rows = list(OutboundMessage.objects.filter(kind=ADT).order_by("id"))
    assert [(r.message_type, r.destination.host, r.destination.port) for r in rows] == [
        ("ADT^A08", "127.0.0.1", sink.port), ("ADT^A40", "127.0.0.1", sink.port)]
    assert rows[0].destination.sends_patient_updates and not rows[0].destination.sends_results
    # A VNA that takes HL7 gets the ADT message, not a re-send of its images.
    assert not Transfer.objects.filter(patient_update__gt=0).exists()

    assert delivery.drain(rows[0].destination_id) == 2
    received = sink.wait_for(2)
    assert [m.control_id for m in received] == [r.message_control_id for r in rows]
    a08, a40 = received
    assert a08.segment("MSH")[3:5] == [settings.HL7_RECEIVING_APPLICATION, settings.HL7_RECEIVING_FACILITY]
    assert a08.segment("MSH")[9] == "ADT^A08^ADT_A01" and a08.segment("MSH")[12] == "2.5.1"
    assert a08.segment("EVN")[1] == "A08"
    pid = a08.segment("PID")
    assert (pid[3].split("^")[:4], pid[5], pid[7], pid[8]) == (["P7", "", "", "HOSP"], "NEWNAME^ANNA", "19800215", "F")
    assert a40.segment("MSH")[9] == "ADT^A40^ADT_A39"
    # The surviving identifier only (P9 is retired into the patient), and the retired one in MRG-1.
    assert [cx.split("^")[0] for cx in a40.segment("PID")[3].split("~")] == ["P7"]
    assert a40.segment("PID")[5] == "NEWNAME^ANNA"
    assert a40.segment("MRG")[1].split("^")[:4] == ["P9", "", "", "HOSP"]
    for message in received:  # each a valid v2.5.1 message of its structure
        assert conformance.problems(message.text) == []
    # Once: delivered, nothing left to send.
    assert set(OutboundMessage.objects.filter(kind=ADT).values_list("status", flat=True)) == {DELIVERED}
    assert delivery.drain(rows[0].destination_id) == 0
    assert sink.count == 2
    # Each delivery is an Export on the audit trail (PS3.15 A.5.3.4) naming the patient sent.
    trail.flush()
    exports = AuditRecord.records.filter(event_id=events.EXPORT.value, destination=f"127.0.0.1:{sink.port}")
    sent = sorted(o["id"] for r in exports for o in r.objects if o["type"] == "patient update")
    assert sent == [r.message_control_id for r in rows]
    assert {p.patient_id for r in exports for p in r.patients.all()} == {"P7"}
    # On the outbound page like every other kind.
    operator = user("operator", ADMINISTRATOR)
    client.force_login(operator)
    page = client.get("/interfaces/").content.decode()
    assert all(r.message_control_id in page for r in rows) and "ADT^A40" in page


def test_a_dicom_only_vna_gets_the_study_again_as_a_transfer(listener, store_dir, settings):
    vna = dicom_vna()
    study = study_of(make_patient("OLDNAME^BEN", "P11"), vna, instances=3)
    with transaction.atomic():  # as when its transfer committed
        archive.maybe_archive(study.pk)
    server = listener()
    assert send_mllp(server.port, adt_a08("A08-2", "P11", name="NEWNAME^BEN", sex="M"))["msa_1"] == "AA"
    resend = Transfer.objects.get(study=study, patient_update=1)
    assert (resend.destination_id, resend.patient_event, resend.status) == (vna.pk, "A08", tr.SCHEDULED)
    assert resend.items.count() == 3
    study.refresh_from_db()
    assert study.corrections["PatientName"] == ["OLDNAME^BEN", "NEWNAME^BEN"]  # rewritten on the way out
    assert study.corrections["PatientSex"] == ["", "M"]
    # A second change before the re-send started rides on it: it reads the patient when it runs.
    assert send_mllp(server.port, adt_a08("A08-3", "P11", name="NEWERNAME^BEN"))["msa_1"] == "AA"
    assert Transfer.objects.filter(study=study, patient_update__gt=0).count() == 1
    study.refresh_from_db()
    assert study.corrections["PatientName"] == ["OLDNAME^BEN", "NEWERNAME^BEN"]
    # A change of nothing that goes out (PID-11, the address) re-sends nothing either.
    Transfer.objects.filter(pk=resend.pk).update(attempts=1)  # as if it had started
    address = adt_a08("A08-5", "P11", name="NEWERNAME^BEN", sex="M").replace(b"|M\r", b"|M|||1 MAIN ST\r")
    assert b"|1 MAIN ST\r" in address
    assert send_mllp(server.port, address)["msa_1"] == "AA"
    assert Transfer.objects.filter(study=study, patient_update__gt=0).count() == 1
    assert not OutboundMessage.objects.filter(kind=ADT).exists()
    # The study stays archived, and its local files stay until the re-send has ended.
    study.refresh_from_db()
    assert study.status == im.ARCHIVED
    settings.ARCHIVE_RETENTION_DAYS = 1
    later = timezone.now() + dt.timedelta(days=2)
    assert archive.purge_archived(now=later) == 0
    transition(resend, tr.CANCELED, entity="transfer", cause="test", actor="test")
    assert archive.purge_archived(now=later) == 1


def test_studies_not_yet_in_a_vna_are_not_forwarded(listener, sink, store_dir):
    patient = make_patient("OLDNAME^CARL", "P21")
    waiting_adt = study_of(patient, adt_vna(sink), sent=False)
    waiting_dicom = study_of(patient, dicom_vna(), sent=False)
    server = listener()
    assert send_mllp(server.port, adt_a08("A08-4", "P21", name="NEWNAME^CARL"))["msa_1"] == "AA"
    assert not OutboundMessage.objects.filter(kind=ADT).exists()
    assert not Transfer.objects.filter(patient_update__gt=0).exists()
    # They go out later with the current data: their corrections already carry the new name.
    for study in (waiting_adt, waiting_dicom):
        study.refresh_from_db()
        assert study.corrections["PatientName"] == ["OLDNAME^CARL", "NEWNAME^CARL"]
    assert sink.count == 0
