"""The imaging side follows the RIS domain through its signals (``ris.signals``), inside the
sender's transaction:

- an A08 or A40 applied (``patient_changed``): the corrections of the patient's studies are
  refreshed and the change is forwarded to the VNAs that already hold one of them
  (``pacs.services.routing.patient_changes``).
"""

from __future__ import annotations

from django.dispatch import receiver

from pacs.services.routing import patient_changes
from ris.signals import patient_changed


@receiver(patient_changed, dispatch_uid="pacs.patient_changed")
def on_patient_changed(sender, patient_id: int, event: str = "A08", merge_id: int | None = None, **kwargs) -> None:
    patient_changes.on_patient_changed(patient_id, event, merge_id)
