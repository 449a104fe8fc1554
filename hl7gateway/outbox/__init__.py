"""The ORU^R01 outbox: outbound report delivery to billing and the EHR over MLLP.

* ``enqueue``: ``enqueue_oru(report_version_id)``, called in the signing transaction, writes one
  ``OutboundMessage`` per enabled destination, rendered now (``content``); after the commit
  ``publish`` wakes one drain task per destination unless one is already queued.
* ``delivery``: what the Celery tasks (``hl7gateway.tasks``) run -- claim due rows with a lease
  (``queue``), send them over one MLLP connection, record each outcome by the ``rules``.
* ``sweep``: the periodic re-drive of rows whose task never ran.
* ``actions``: the operator's retry and cancel; ``queries``: what the operator page shows.
* ``destinations``: the destinations declared in ``HL7_ORU_DESTINATIONS``.

Backoff, leases and the forms of the declared destinations are shared with VNA routing
(``project.delivery``).
"""
