"""What the two outbound queues share: VNA transfers (``pacs.services.routing``) and the HL7
ORU^R01 outbox (``hl7gateway.outbox``).

Both keep one database row per thing to send and have Celery workers send it, so both need the
same four rules, written once here:

* ``backoff``: when to try again after a transient failure (exponential, jittered, capped);
* ``leases``: a worker takes a row for a limited time; a lease that ran out frees the row;
* ``sweep``: the periodic re-publication of rows no worker holds;
* ``destinations``: the forms of the destinations declared in the environment
  (``VNA_DESTINATIONS``, ``HL7_ORU_DESTINATIONS``); ``declared``: the table rows kept in step
  with them; ``signals``: the hand-over of a patient change (A08, A40) from VNA routing to the
  outbox, for the VNAs that take HL7 ADT.

Nothing here imports an app: each side passes its own settings and models.
"""
