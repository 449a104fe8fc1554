"""The HL7 gateway follows the RIS domain through its signals (``ris.signals``).

- A report signed: one ORU^R01 (HL7 v2.5.1 chapter 7, 7.3.1) per enabled destination is queued
  in the signing transaction (``hl7gateway.outbox.enqueue.enqueue_oru``), so that the rows commit
  or roll back with the signature; the delivery tasks are published after the commit.
- A status of a requested procedure, its step, study or report changed: if the change is one
  the order placer is told of (``hl7gateway.order_status.event_for``, IHE RAD-3), its order
  status message (ORM^O01 / OMI^O23, ORC-1 SC) is queued in the same way, in the transaction of
  the change (``hl7gateway.outbox.enqueue.enqueue_status``).
- The same change posts a charge to billing (IHE RAD-35, DFT^P03; ``hl7gateway.charges``): the
  technical charge with the exam complete, the professional one with the final report; the
  order cancelled (before the exam, or after it: the placer status) reverses the charges already
  posted (FT1-6 CD).  Same transaction, same outbox.
- The department created an order itself (``ris.signals.filler_order_created``): the new filler
  order goes to the order placer (ORM^O01 / OMI^O23 ORC-1 SN, HL7 v2.5.1 4.5.1.1), queued in the
  transaction that created it, before any status message of that order.
- An A08 / A40 for a patient whose studies are in VNAs that take HL7 ADT (announced by VNA
  routing through ``project.delivery.signals.archive_patient_changed``): one ADT^A08 / ADT^A40 per
  such VNA is queued in the A08 / A40 transaction (``hl7gateway.outbox.enqueue.enqueue_patient_update``,
  IHE RAD-12).
"""

from __future__ import annotations

from django.dispatch import receiver

from hl7gateway import charges, order_status
from project.delivery.signals import archive_patient_changed
from ris.signals import filler_order_created, procedure_status_changed, report_signed


@receiver(report_signed, dispatch_uid="hl7gateway.report_signed")
def on_report_signed(sender, report_version, **kwargs) -> None:
    # Here, not at the top: this module is loaded with the apps in every process, and the outbox
    # (ORU rendering, MLLP client, TLS) is a heavy import that only signing needs.
    from hl7gateway.outbox import enqueue

    enqueue.enqueue_oru(report_version.pk)


@receiver(procedure_status_changed, dispatch_uid="hl7gateway.procedure_status_changed")
def on_procedure_status_changed(sender, entity, requested_procedure_id, from_status, to_status,
                                placer_request=False, **kwargs) -> None:
    event = order_status.event_for(entity, from_status, to_status, placer_request=placer_request)
    charge = charges.charge_for(event)
    credit = charges.credits(entity, to_status)
    if event is None and not credit:
        return
    from hl7gateway.outbox import enqueue  # heavy, see on_report_signed

    if event is not None:
        enqueue.enqueue_status(requested_procedure_id, event)
    if charge is not None:
        enqueue.enqueue_charge(requested_procedure_id, charge)
    if credit:
        enqueue.enqueue_credits(requested_procedure_id)


@receiver(filler_order_created, dispatch_uid="hl7gateway.filler_order_created")
def on_filler_order_created(sender, order_id, requested_procedure_id, **kwargs) -> None:
    from hl7gateway.outbox import enqueue  # heavy, see on_report_signed

    enqueue.enqueue_status(requested_procedure_id, order_status.FILLER_ORDER)


@receiver(archive_patient_changed, dispatch_uid="hl7gateway.archive_patient_changed")
def on_archive_patient_changed(sender, patient_id, event, archives, merge_id=None, **kwargs) -> None:
    from hl7gateway.outbox import enqueue  # heavy, see on_report_signed

    enqueue.enqueue_patient_update(patient_id, event, merge_id, archives)
