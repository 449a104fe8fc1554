"""Domain signals of the imaging side, so that higher layers (the reading worklist,
monitoring) follow it without pacs importing them.

- ``mpps_completed`` (kwarg ``performed_procedure_step``): sent inside the transaction that
  moves an MPPS to COMPLETED (PS3.4 F.7.2.2); the study-completion service listens for it.
- ``study_completed`` (kwargs ``study``, ``requested_procedure_id``, ``completed_at``): sent
  inside the transaction that completes a matched study (an MPPS COMPLETED or a quiet period); the
  reading worklist lists the study for reading in that transaction.
- ``dicom_operation`` (kwargs ``calling_ae_title``, ``operation``, ``status``): a DIMSE
  operation was answered with ``status`` (PS3.7 Annex C) to the calling AE; sent after the
  answer is decided, outside any transaction.  Monitoring counts them.  A receiver must not
  block or raise: it runs on the association's thread.
- ``worklist_items_returned`` (kwargs ``scheduled_step_ids``, ``calling_ae_title``): a Modality
  Worklist C-FIND (PS3.4 K.4.1) answered these scheduled procedure steps; monitoring records
  which step went to which modality, never delaying the answer.
"""

from django.dispatch import Signal

mpps_completed = Signal()
study_completed = Signal()
dicom_operation = Signal()
worklist_items_returned = Signal()
