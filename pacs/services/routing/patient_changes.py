"""Patient changes reach the archive: an A08 (demographics) or A40 (merge) applied after a study
left for a VNA is forwarded to that VNA (IHE RAD-12 Patient Update; IHE ITI PAM for the merge).

``ris.services.patients`` announces each change (``ris.signals.patient_changed``) inside its
transaction; ``on_patient_changed`` runs in that transaction and decides, once for all the
patient's studies:

* what goes out from now on: each matched study's corrections (``order_matching.corrections_for``:
  PatientName, PatientID, IssuerOfPatientID, PatientBirthDate, PatientSex of the Patient Module,
  PS3.3 C.7.1.1) are recomputed from the patient as the engine holds it, so a study not yet in a
  VNA goes out with the current data and needs nothing more;
* what is already out: a VNA holds a study when at least one of its instances was sent to it
  (a transfer item SENT or COMMITTED).  A VNA that takes HL7 ADT (``VnaDestination.adt_host`` /
  ``adt_port``) is sent one ADT^A08 or ADT^A40 per change by the HL7 outbox
  (``project.delivery.signals.archive_patient_changed``; the outbox renders and queues it).  A
  DICOM-only VNA is sent the study's instances again, rewritten on the way out with the corrected
  attributes, as a transfer like any other (``Transfer.patient_update`` numbers the re-sends):
  same sender, retries, storage commitment and transfers page -- only when the attributes that
  go out changed (an A08 of the address alone, or the survivor's own studies after an A40,
  re-send nothing).

The stored files are never rewritten: they stay the bytes the modality sent (the audit trail and
a resend's comparison, ``pacs.services.resends``, rely on that), and the rewrite on the way out
is the one ``pacs.scu``, ``pacs.scu_dcmtk`` and ``pacs.stow`` already apply for the order's
corrections.  Whether the VNA then replaces its copy depends on it (docs/dicom-conformance.md,
"Patient changes after archiving").
"""

from __future__ import annotations

import logging

from django.db.models import Max
from django.utils import timezone

from pacs.models import Instance, Study, Transfer, TransferItem, VnaDestination
from pacs.models import transfers as tr
from pacs.services import order_matching
from pacs.services.routing.schedule import enqueue_on_commit
from project.delivery.signals import AdtArchive, archive_patient_changed

log = logging.getLogger("pacs.routing")

#: Transfer items whose instance reached the VNA.
_OUT = (tr.ITEM_SENT, tr.ITEM_COMMITTED)


def on_patient_changed(patient_id: int, event: str, merge_id: int | None = None) -> dict:
    """Inside the A08 / A40 transaction: refresh the corrections of the patient's studies and
    forward the change to the VNAs that already hold one of them.  Returns what it did."""
    studies = list(Study.objects.filter(requested_procedure__order__patient_id=patient_id)
                   .select_related("requested_procedure__order__patient"))
    rewritten: set[int] = set()  # studies whose copies in a VNA now differ from what goes out
    for study in studies:
        rp = study.requested_procedure
        corrections = order_matching.corrections_for(study, rp)
        mismatch = order_matching.demographics_mismatch(study, rp.order.patient)
        if corrections != study.corrections:
            rewritten.add(study.pk)
        if corrections != study.corrections or mismatch != study.demographics_mismatch:
            study.corrections, study.demographics_mismatch = corrections, mismatch
            study.save(update_fields=["corrections", "demographics_mismatch", "updated_at"])
    held = sorted(set(TransferItem.objects.filter(transfer__study__in=studies, status__in=_OUT)
                      .values_list("transfer__study_id", "transfer__destination_id")))
    vnas = {d.pk: d for d in VnaDestination.objects.filter(pk__in={d for _, d in held}, enabled=True)}
    by_pk = {s.pk: s for s in studies}
    adt: dict[int, VnaDestination] = {}
    resent: list[int] = []
    for study_id, destination_id in held:
        vna = vnas.get(destination_id)
        if vna is None:
            continue  # disabled since: nothing is sent to it
        if vna.takes_adt:
            adt[vna.pk] = vna
            continue
        if study_id not in rewritten:
            continue  # the attributes sent are the same as before (a change of another field)
        transfer = resend(by_pk[study_id], vna, event)
        if transfer is not None:
            resent.append(transfer.pk)
    if adt:
        archive_patient_changed.send(
            sender=Study, patient_id=patient_id, event=event, merge_id=merge_id,
            archives=tuple(AdtArchive(v.pk, v.name, v.adt_host, v.adt_port, v.adt_tls) for v in adt.values()))
    if resent or adt:
        log.info("patient change forwarded to the archive",
                 extra={"event": event, "transfers": resent, "adt_destinations": sorted(adt)})
    return {"transfers": resent, "adt_destinations": sorted(adt)}


def resend(study: Study, vna: VnaDestination, event: str) -> Transfer | None:
    """Schedule the re-send of every instance of ``study`` to ``vna`` with the corrected patient
    attributes (they are read when the transfer runs, so the latest change is what goes).

    A re-send that has not started yet already carries this change: no second one is written.
    A study whose local files were purged after archiving cannot be re-sent: logged, None."""
    if study.purged_at is not None:
        log.warning("patient change not sent to a DICOM-only VNA: the study's local files were purged",
                    extra={"study_id": study.pk, "destination": vna.pk})
        return None
    transfers = Transfer.objects.filter(study=study, destination=vna)
    if transfers.filter(patient_update__gt=0, status=tr.SCHEDULED, attempts=0).exists():
        return None
    number = (transfers.aggregate(n=Max("patient_update"))["n"] or 0) + 1
    transfer = Transfer.objects.create(study=study, destination=vna, batch=study.batch, patient_update=number,
                                       patient_event=event, next_attempt_at=timezone.now())
    # The instances of the study's batches (one not yet completed goes out with its own batch).
    instances = Instance.objects.filter(study=study, batch__isnull=False).values_list("pk", flat=True)
    TransferItem.objects.bulk_create([TransferItem(transfer=transfer, instance_id=pk) for pk in instances])
    enqueue_on_commit(transfer.pk)
    return transfer
