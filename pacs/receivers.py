"""The imaging side follows the RIS domain through its signals (``ris.signals``), inside the
sender's transaction:

- an A08 or A40 applied (``patient_changed``): the corrections of the patient's studies are
  refreshed and the change is forwarded to the VNAs that already hold one of them
  (``pacs.services.routing.patient_changes``).
- a new order's requested procedures (``procedures_ordered``): their relevant priors are looked
  for once the order commits (``pacs.services.priors``).
"""

from __future__ import annotations

from django.dispatch import receiver

from pacs.services import priors
from pacs.services.routing import patient_changes
from ris.signals import patient_changed, procedures_ordered


@receiver(patient_changed, dispatch_uid="pacs.patient_changed")
def on_patient_changed(sender, patient_id: int, event: str = "A08", merge_id: int | None = None, **kwargs) -> None:
    patient_changes.on_patient_changed(patient_id, event, merge_id)


@receiver(procedures_ordered, dispatch_uid="pacs.procedures_ordered")
def on_procedures_ordered(sender, requested_procedure_ids: list[int], **kwargs) -> None:
    priors.on_procedures_ordered(requested_procedure_ids)
