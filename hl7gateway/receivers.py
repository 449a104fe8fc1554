"""The HL7 gateway follows the RIS domain through its signals (``ris.signals``).

- A report signed: one ORU^R01 (HL7 v2.5.1 chapter 7, 7.3.1) per enabled destination is queued
  in the signing transaction (``hl7gateway.outbox.enqueue.enqueue_oru``), so that the rows commit
  or roll back with the signature; the delivery tasks are published after the commit.
- A status of a requested procedure, its step, study or report changed: if the change is one
  the order placer is told of (``hl7gateway.order_status.event_for``, IHE RAD-3), its order
  status message (ORM^O01 / OMI^O23, ORC-1 SC) is queued in the same way, in the transaction of
  the change (``hl7gateway.outbox.enqueue.enqueue_status``).
"""

from __future__ import annotations

from django.dispatch import receiver

from hl7gateway import order_status
from ris.signals import procedure_status_changed, report_signed


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
    if event is None:
        return
    from hl7gateway.outbox import enqueue  # heavy, see on_report_signed

    enqueue.enqueue_status(requested_procedure_id, event)
