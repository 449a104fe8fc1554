"""Monitoring follows the DICOM services through ``pacs.signals`` (pacs does not import
monitoring):

- ``dicom_operation``: each DIMSE answer is counted per calling AE and status
  (``monitoring.dicom_log``: in memory, written in the background);
- ``worklist_items_returned``: which scheduled step a Modality Worklist C-FIND returned to which
  AE, for the accession journey (``monitoring.records``), written on a DIMSE database thread
  (``pacs.dimse.db.run_later``) so that the answer never waits for it.
"""

from __future__ import annotations

from django.dispatch import receiver

from monitoring import dicom_log, records
from pacs.dimse import db
from pacs.signals import dicom_operation, worklist_items_returned


@receiver(dicom_operation, dispatch_uid="monitoring.dicom_operation")
def on_dicom_operation(sender, calling_ae_title: str, operation: str, status: int, **kwargs) -> None:
    dicom_log.record_quietly(calling_ae_title, operation, status)


@receiver(worklist_items_returned, dispatch_uid="monitoring.worklist_items_returned")
def on_worklist_items_returned(sender, scheduled_step_ids: list[int], calling_ae_title: str, **kwargs) -> None:
    db.run_later(records.record_worklist_results, scheduled_step_ids, calling_ae_title)
