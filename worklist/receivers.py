"""Keep the reading worklist's copied columns current when the RIS domain changes
(A08 rename, A40 merge, XO priority change): see ``ris.signals``."""

from __future__ import annotations

from django.dispatch import receiver

from ris.signals import patient_changed, procedure_changed
from worklist import services


@receiver(patient_changed, dispatch_uid="worklist.patient_changed")
def on_patient_changed(sender, patient_id: int, **kwargs) -> None:
    services.refresh_reading_items_for_patient(patient_id)


@receiver(procedure_changed, dispatch_uid="worklist.procedure_changed")
def on_procedure_changed(sender, requested_procedure_id: int, **kwargs) -> None:
    services.refresh_reading_item(requested_procedure_id)
