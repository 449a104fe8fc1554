"""The outbox: outbound HL7 to billing and the EHR over MLLP -- ORU^R01 results, order status
messages to the order placer (ORM^O01 / OMI^O23, IHE RAD-3) and charges to billing (DFT^P03,
IHE RAD-35), one queue, one delivery.

* ``enqueue``: ``enqueue_oru(report_version_id)``, called in the signing transaction, and
  ``enqueue_status(requested_procedure_id, event)``, ``enqueue_charge(requested_procedure_id,
  kind)`` and ``enqueue_credits(requested_procedure_id)``, called in the transaction of the change,
  and ``enqueue_patient_update(patient_id, event, merge_id, archives)`` (an A08 / A40 for the
  VNAs that hold the patient's studies and take HL7 ADT, IHE RAD-12), called in the transaction of
  the change, write one ``OutboundMessage`` per enabled destination that takes that kind, rendered now
  (``content``); after the commit ``publish`` wakes one drain task per destination unless one
  is already queued.
* ``delivery``: what the Celery tasks (``hl7gateway.tasks``) run -- claim due rows with a lease
  (``queue``), send them over one MLLP connection, record each outcome by the ``rules``.
* ``sweep``: the periodic re-drive of rows whose task never ran.
* ``actions``: the operator's retry and cancel; ``queries``: what the operator page shows.
* ``destinations``: the destinations declared in ``HL7_ORU_DESTINATIONS`` (``messages=oru,status,charges,orders``,
  ``links=viewer,wado``).

Backoff, leases and the forms of the declared destinations are shared with VNA routing
(``project.delivery``).
"""
