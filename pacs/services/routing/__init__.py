"""Routing complete studies to the VNA (IHE RAD-TF Scheduled Workflow: the
image archive's copy; one transfer row per study batch and destination).

* ``destinations``: the VNAs, from the admin and ``VNA_DESTINATIONS``;
* ``schedule``: one ``Transfer`` per enabled destination for a study's batch, with one
  ``TransferItem`` per instance, in the completing transaction; its task is queued on commit;
* ``transfers``: one attempt of a transfer (what the Celery task ``pacs.send_transfer`` runs):
  lease the row, send the items not sent yet (``pacs.scu`` C-STORE, PS3.4 B; ``pacs.stow``
  STOW-RS, PS3.18 10.5), ask for Storage Commitment (PS3.4 J.3.2), retry transient failures
  with backoff, fail permanent ones at once with the reason;
* ``commitment``: the N-EVENT-REPORT (PS3.4 J.3.3); ``archive``: the study is archived when
  every transfer of every batch is committed, and its local files purged after
  ``ARCHIVE_RETENTION_DAYS`` (never before storage commitment);
* ``sweep``: re-queue rows no worker holds; ``actions``: retry and cancel from the transfers page;
* ``sending``: the plain values and errors the senders exchange with ``transfers``.

Backoff, leases, the sweep's publishing and the forms of ``VNA_DESTINATIONS`` are shared with
the HL7 outbox (``project.delivery``).
"""
