"""Signals the RIS domain sends so that other apps can follow its changes without ris
importing them (ris imports nothing of ours but project; it records its changes through
project.auditing, see ris.auditing).

Every one is sent inside the transaction that makes the change, so that what a receiver
writes commits or rolls back with it:

- ``patient_changed`` (kwargs ``patient_id``, ``event``, ``merge_id``): demographics updated
  (``event`` "A08") or a merge (``event`` "A40", ``merge_id`` the ``PatientMerge`` row) moved
  studies to this patient.  VNA routing forwards the change to the archives that already hold
  the patient's studies (``pacs.services.routing.patient_changes``).
- ``procedure_changed`` (kwarg ``requested_procedure_id``): priority, procedure or
  accession data of a requested procedure changed (XO), or its placer status (ORC-1 CA / DC).
- ``report_changing`` (kwargs ``requested_procedure_id``, ``user``): ``user`` is about to open,
  change or sign the study's report.  A receiver refuses by raising ``ris.errors.DomainError``
  (the reading worklist: another user holds the study's active reading claim); the report
  service answers that refusal as ``ReportPermissionDenied``.
- ``report_draft_saved`` (kwargs ``requested_procedure_id``, ``report_status``): the text of
  the study's open draft was saved (autosave).
- ``report_signed`` (kwargs ``report_version``, ``requested_procedure_id``, ``report_status``,
  ``user``): a version was signed (OBR-25 P, F or C) and the report's status moved to
  ``report_status``.  The reading worklist mirrors the status and gives back the signer's
  claim; the HL7 gateway queues the ORU^R01 (HL7 v2.5.1 chapter 7) of the version, so that a
  signed report is never left without its result message, and no result message is sent for a
  signature that rolled back.
- ``procedure_status_changed`` (kwargs ``entity``, ``object_id``, ``requested_procedure_id``,
  ``from_status``, ``to_status``, ``placer_request``): ``ris.services.transitions.transition``
  moved something that belongs to one requested procedure (its steps, itself, its study, its
  report: every entity of ``ris.states.TABLES`` whose row names a requested procedure).
  ``placer_request`` is True when the order placer asked for the change (ORC-1 of an inbound
  ORM^O01 / OMI^O23, IHE RAD-2/RAD-4).  The HL7 gateway decides from it which order status
  message (ORM^O01 / OMI^O23 with ORC-1 SC, IHE RAD-3) the order placer is sent, and queues it
  in this transaction.
- ``filler_order_created`` (kwargs ``order_id``, ``requested_procedure_id``): the department
  created an order itself (ORC-1 ``SN``, HL7 v2.5.1 4.5.1.1 and table 0119: an unordered study
  reconciled to its patient, encounter-based imaging).  The HL7 gateway queues the new filler
  order to the order placer (ORM^O01 / OMI^O23 ORC-1 SN) in this transaction, so that the EHR
  learns of the order and answers with the placer order number it assigns (ORC-1 NA).
- ``procedures_ordered`` (kwarg ``requested_procedure_ids``): a new order (ORC-1 NW, IHE RAD-2 /
  RAD-4) created these requested procedures.  The imaging side looks for the patient's relevant
  prior studies once the transaction commits (``pacs.services.priors``).
"""

from django.dispatch import Signal

patient_changed = Signal()
procedure_changed = Signal()
report_changing = Signal()
report_draft_saved = Signal()
report_signed = Signal()
procedure_status_changed = Signal()
filler_order_created = Signal()
procedures_ordered = Signal()
