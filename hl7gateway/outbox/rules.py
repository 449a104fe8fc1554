"""The numbers and classifications of ORU^R01 delivery, in one place.

* AA: delivered.  AR: failed at once.  AE, or an answer that is not an ACK of the message
  (HL7 v2.5.1 chapter 2.9, original acknowledgment mode): retried with backoff up to
  ``HL7_ORU_MAX_ATTEMPTS`` attempts since creation or the last operator retry, then failed.
* No answer within the ACK timeout, connection refused or lost: retried with the same backoff
  and no attempt limit -- a destination that is down for hours must not lose reports; the
  operator page shows the queue growing and its age.
* A message for a destination that validates (``validate_messages``) and that is not valid HL7
  for its version and structure (``hl7gateway.conformance``) is not sent: the attempt's outcome
  is ``INVALID`` with the findings, and the message fails at once, like AR.
* Delays up to ``COUNTDOWN_LIMIT_SECONDS`` are Celery countdowns, longer ones wait for the
  sweep; both stay far below the Redis visibility timeout, after which the broker would hand
  a countdown task to a second worker.
"""

from __future__ import annotations

import random

from django.conf import settings

from hl7gateway import client
from project.delivery import backoff
from ris.errors import DomainError

#: ``ris.StatusChange.entity`` of an outbound message's transitions.
ENTITY = "oru_outbound"
#: A drain task sends batches for at most this long, then asks for another (fairness, leases).
DRAIN_SECONDS = 10.0
#: Delays up to this many seconds are Celery countdowns; longer ones wait for the sweep.
COUNTDOWN_LIMIT_SECONDS = 60
#: Added to connect + ACK timeouts for a worker's lease on the row it sends.
LEASE_MARGIN_SECONDS = 5.0
#: Rows the sweep re-queues per run.
SWEEP_BATCH = 500

#: The attempt's outcome for a message that failed validation before it was sent.
INVALID = "INVALID"

RETRY_WITHOUT_LIMIT = {client.TIMEOUT, client.CONNECT_ERROR, client.CONNECTION_LOST}
RETRY_WITH_LIMIT = {client.ERROR, client.BAD_ACK}


class OutboxError(DomainError):
    """An outbox request the rules refuse (message for the operator)."""


def lease_seconds(connect_timeout: float, ack_timeout: float) -> float:
    """How long a worker holds the rows of a batch: a batch stops starting new sends after one
    ACK timeout, and the last send takes at most another."""
    return connect_timeout + 2 * ack_timeout + LEASE_MARGIN_SECONDS


def backoff_seconds(failures: int, *, rng: random.Random | None = None) -> float:
    """The delay after ``failures`` failed attempts: ``HL7_ORU_RETRY_BASE_SECONDS`` doubled per
    failure, capped by ``HL7_ORU_RETRY_MAX_SECONDS``, jittered (``project.delivery.backoff``)."""
    return backoff.backoff_seconds(failures, base=settings.HL7_ORU_RETRY_BASE_SECONDS,
                                   cap=settings.HL7_ORU_RETRY_MAX_SECONDS, rng=rng)
