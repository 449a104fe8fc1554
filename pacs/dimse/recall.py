"""C-MOVE / C-GET of a study purged here after archiving (PS3.4 C.4.2, C.4.3): fetched back from
the VNA on demand (``pacs.services.recall``).

The retrieval queues a recall of each purged study it names and waits up to
``RECALL_WAIT_SECONDS`` (all studies together) for them to be held again; the database is read
on the DIMSE database threads (``pacs.dimse.db``) and none is held while it waits, so the
recalled instances' C-STOREs are indexed meanwhile.  Then:

- everything named is held: a normal retrieval;
- some named instances are held, others still being fetched: the held ones are sent, the others
  are failed sub-operations (final 0xB000 with the Failed SOP Instance UID List, C.4.2.1.5);
- nothing named is held: refused with 0xA702 "Refused: Out of Resources - Unable to perform
  sub-operations" (C.4.2.1.5, a transient condition), ErrorComment (0000,0902) "being fetched
  from the archive; retry in N s"; or, when no archive known to hold a study can be asked,
  0xC000 "Unable to process" with ErrorComment saying so (retrying will not help).
"""

from __future__ import annotations

import time

from django.conf import settings
from pydicom.dataset import Dataset

from pacs.dimse import db
from pacs.dimse.status import UNABLE_TO_PROCESS
from pacs.dimse.status import failure as _failure
from pacs.services import recall
from project.auditing import events

OUT_OF_RESOURCES_SUBOPERATIONS = 0xA702  # C-MOVE, C-GET: unable to perform sub-operations (PS3.4 C.4.2.1.5)


def recall_purged(assoc, identifier: Dataset, items: list, operation: str, *, plan):
    """``(items, missing, refusal)``: the instances to send, those of purged studies not back in
    time (failed sub-operations), and the refusal ``(status, None)`` when nothing named is held.
    ``plan(purged)`` lists the instances named (of held or of purged studies)."""
    missing = db.run(plan, True)
    if not missing:
        return items, [], None
    calling = (assoc.requestor.ae_title or "").strip()
    address = assoc.requestor.address or ""
    deadline = time.monotonic() + settings.RECALL_WAIT_SECONDS
    results = {}
    for uid in sorted({m.study_instance_uid for m in missing}):
        first = db.run(
            recall.request,
            uid,
            actor=calling or "unknown AE",
            via=operation,
            actor_kind=events.DICOM,
            source_address=address,
        )
        results[uid] = first
    for uid, first in results.items():
        results[uid] = recall.wait(
            uid, first, seconds=max(0.0, deadline - time.monotonic()), check=lambda u: db.run(recall.state, u)
        )
    if any(r.state == recall.HELD for r in results.values()):
        items, missing = db.run(plan, False), db.run(plan, True)
    if not missing:
        return items, [], None
    if items:
        return items, missing, None
    waiting = [r for r in results.values() if r.state == recall.FETCHING]
    if waiting:
        after = max(r.retry_after for r in waiting)
        return (
            items,
            missing,
            (_failure(OUT_OF_RESOURCES_SUBOPERATIONS, f"being fetched from the archive; retry in {after} s"), None),
        )
    return items, missing, (_failure(UNABLE_TO_PROCESS, "purged after archiving; no archive to fetch it from"), None)
