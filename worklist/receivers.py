"""The reading worklist follows the RIS domain and the imaging side through their signals
(``ris.signals``, ``pacs.signals``), each inside the sender's transaction:

- A08 rename, A40 merge, XO priority change, the placer's CA / DC: the list row's copied columns
  (the placer status is the row's flag) are refreshed;
- a report about to change: refused while another user holds the study's active claim;
- a draft saved, a report signed: the row shows the report's status; a signature gives back
  the signer's claim;
- a study complete (all its images stored): the study is listed for reading.
"""

from __future__ import annotations

from django.dispatch import receiver

from pacs.signals import study_completed
from ris.models.reports import REPORT_DRAFT
from ris.signals import patient_changed, procedure_changed, report_changing, report_draft_saved, report_signed
from worklist import services


@receiver(patient_changed, dispatch_uid="worklist.patient_changed")
def on_patient_changed(sender, patient_id: int, **kwargs) -> None:
    services.refresh_reading_items_for_patient(patient_id)


@receiver(procedure_changed, dispatch_uid="worklist.procedure_changed")
def on_procedure_changed(sender, requested_procedure_id: int, **kwargs) -> None:
    services.refresh_reading_item(requested_procedure_id)


@receiver(report_changing, dispatch_uid="worklist.report_changing")
def on_report_changing(sender, requested_procedure_id: int, user, **kwargs) -> None:
    """Raises ``ClaimDenied`` (a ``DomainError``) when another user holds the study's claim."""
    services.ensure_not_claimed_by_other(requested_procedure_id, user)


@receiver(report_draft_saved, dispatch_uid="worklist.report_draft_saved")
def on_report_draft_saved(sender, requested_procedure_id: int, report_status: str, **kwargs) -> None:
    if report_status == REPORT_DRAFT:  # the list shows "Draft" once someone has started writing
        services.set_report_status(requested_procedure_id, REPORT_DRAFT)


@receiver(report_signed, dispatch_uid="worklist.report_signed")
def on_report_signed(sender, requested_procedure_id: int, report_status: str, user, **kwargs) -> None:
    services.set_report_status(requested_procedure_id, report_status)
    services.release_claim(requested_procedure_id, user, reason="SIGNED")


@receiver(study_completed, dispatch_uid="worklist.study_completed")
def on_study_completed(sender, requested_procedure_id: int, completed_at, **kwargs) -> None:
    services.mark_ready_for_reading(requested_procedure_id, ready_at=completed_at)
