"""The retry delay after a transient failure, shared by VNA transfers and ORU delivery.

Exponential (``base * 2^(failures - 1)``), capped, then a random 50-100 % of it ("full
jitter" halved): workers that failed together against one destination do not come back
together.  Each side passes its own base and cap (``TRANSFER_RETRY_*_SECONDS``,
``HL7_ORU_RETRY_*_SECONDS``); both caps stay far below the Redis visibility timeout, so a
countdown task is never redelivered before it is due.
"""

from __future__ import annotations

import random


def backoff_seconds(failures: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after ``failures`` consecutive failures (1 for the first)."""
    ceiling = min(cap, base * (2 ** max(failures - 1, 0)))
    return ceiling * (0.5 + 0.5 * (rng or random).random())
