"""Publishing rows again: what the periodic sweeps of both queues do with the rows they find.

A row whose task was lost (a broker restarted, a worker killed after its lease ran out) is
still in the database; publishing its task again is always safe because every task claims its
row first (``leases``) and does nothing when the row is settled or held.  A broker that is
down stops the publishing at the first failure: the next sweep tries again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable


def publish_each(ids: Iterable[int], publish: Callable[[int], object], *, log: logging.Logger, event: str,
                 key: str) -> int:
    """Call ``publish(id)`` for each id, stopping at the first failure (logged as ``event`` with
    the id under ``key``).  Returns how many were published."""
    published = 0
    for pk in ids:
        try:
            publish(pk)
        except Exception:  # noqa: BLE001 - broker down: the rows stay due, the next sweep publishes them
            log.warning(event, extra={key: pk})
            break
        published += 1
    return published
