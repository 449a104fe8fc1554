"""The retry delay after a transient failure, shared by VNA transfers and ORU delivery.

Exponential (``base * 2^(failures - 1)``), capped, then a random 50-100 % of it ("full
jitter" halved): workers that failed together against one destination do not come back
together.  Each side passes its own base and cap (``TRANSFER_RETRY_*_SECONDS``,
``HL7_ORU_RETRY_*_SECONDS``); both caps stay far below the Redis visibility timeout, so a
countdown task is never redelivered before it is due.

``next_attempt`` adds the other half of the rule every row with a bounded number of attempts
follows: give up once the attempts reach the cap, else try again at ``now`` plus the delay.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass


def backoff_seconds(failures: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after ``failures`` consecutive failures (1 for the first)."""
    ceiling = min(cap, base * (2 ** max(failures - 1, 0)))
    return ceiling * (0.5 + 0.5 * (rng or random).random())


@dataclass(frozen=True)
class Retry:
    """When to try again (``at``) and the delay it is from now (``delay``, seconds: the countdown
    of the task that makes the attempt)."""

    at: dt.datetime
    delay: float


def next_attempt(
    attempts: int,
    *,
    max_attempts: int | None,
    base: float,
    cap: float,
    now: dt.datetime,
    rng: random.Random | None = None,
) -> Retry | None:
    """After ``attempts`` attempts, the last one failed transiently: None when they reached
    ``max_attempts`` (give up; None: no cap), else the retry ``backoff_seconds`` after ``now``."""
    if max_attempts is not None and attempts >= max_attempts:
        return None
    delay = backoff_seconds(attempts, base=base, cap=cap, rng=rng)
    return Retry(at=now + dt.timedelta(seconds=delay), delay=delay)
