"""The hash chain over the audit trail: sealing, verification, retention.

Each sealed record carries ``seq`` (its place in the chain), ``prev_hash`` (the previous record's
``record_hash``) and ``record_hash`` = SHA-256(prev_hash + canonical content), so that changing,
removing or inserting a record breaks the chain from there on (the tamper evidence that IHE ATNA
and HIPAA 45 CFR 164.312(b) audit controls ask of an audit log; the engine's database owner could
still rewrite the whole chain, which the syslog export to an Audit Record Repository guards against).

Records are written by many processes and committed in any order, so they are sealed afterwards,
by one sealer at a time, in id order of what is committed: a record that commits late (a lower id
than sealed ones) is sealed in the next pass.  The chain order is ``seq``, not ``id``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db import connection, transaction
from django.utils import timezone

from audit import exports, trail
from audit.models import AuditRecord, ChainCheck
from project.auditing import events

GENESIS = "0" * 64
# pg_advisory_xact_lock key of the sealer (and of the purge, which must not run beside it).
_LOCK_KEY = 0x617564697400  # "audit\0"
_CONTENT = ("id", "occurred_at", "event_id", "event_type", "action", "outcome", "actor", "actor_kind",
            "source_address", "destination", "objects", "detail")


def canonical(row: dict) -> str:
    """The record's content as the chain hashes it: every column but the chain's own, JSON with
    sorted keys and no spaces, the time in UTC ISO 8601 with microseconds."""
    content = {name: row[name] for name in _CONTENT}
    content["occurred_at"] = row["occurred_at"].astimezone(UTC).isoformat(timespec="microseconds")
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(prev_hash: str, row: dict) -> str:
    return hashlib.sha256((prev_hash + canonical(row)).encode()).hexdigest()


def _lock() -> None:
    """One sealer (or purge) at a time.  PostgreSQL: a transaction-level advisory lock; SQLite
    (transaction_mode IMMEDIATE) serializes writing transactions by its write lock already."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])


def _last_sealed() -> tuple[int, str]:
    last = AuditRecord.records.filter(seq__isnull=False).order_by("-seq").values_list("seq", "record_hash").first()
    if last is not None:
        return last
    anchor = latest_anchor()
    return (anchor["anchor_seq"], anchor["anchor_hash"]) if anchor else (0, GENESIS)


def seal(limit: int = 5000) -> int:
    """Give up to ``limit`` unsealed records, in id order, the next ``seq`` and their hashes;
    return how many were sealed.  Idempotent: a second sealer waits for the first and continues
    where it ended."""
    with transaction.atomic():
        _lock()
        seq, prev = _last_sealed()
        rows = list(AuditRecord.records.filter(seq__isnull=True).order_by("id").values(*_CONTENT)[:limit])
        updates = []
        for row in rows:
            seq += 1
            digest = record_hash(prev, row)
            updates.append((seq, prev, digest, row["id"]))
            prev = digest
        if updates:
            with connection.cursor() as cursor:
                # The one UPDATE the triggers of migration 0002 allow: sealing an unsealed row.
                cursor.executemany(
                    "UPDATE audit_auditrecord SET seq = %s, prev_hash = %s, record_hash = %s "
                    "WHERE id = %s AND seq IS NULL", updates)
    return len(updates)


def latest_anchor() -> dict | None:
    """The ``detail`` of the latest purge's record: ``anchor_seq`` and ``anchor_hash`` of the last
    record it deleted, from which the remaining chain continues."""
    rows = (AuditRecord.records.filter(event_id=events.AUDIT_LOG_USED.value, action=events.DELETE)
            .order_by("-id").values_list("detail", flat=True))
    for detail in rows.iterator(chunk_size=100):
        if isinstance(detail, dict) and "anchor_seq" in detail and "anchor_hash" in detail:
            return detail
    return None


@dataclass(frozen=True)
class Break:
    """Something wrong with the chain: ``kind`` is hash (content changed), link (prev_hash is not
    the predecessor's hash), gap (seq missing: a record deleted), start (the chain does not start
    at the genesis or the latest purge's anchor) or unsealed (a record the sealer has not reached
    although it is older than the threshold)."""

    kind: str
    seq: int | None
    record_id: int
    message: str

    def __str__(self) -> str:
        where = f"seq {self.seq}" if self.seq is not None else "unsealed"
        return f"{self.kind}: record {self.record_id} ({where}): {self.message}"


@dataclass
class Verification:
    checked: int = 0
    breaks: list[Break] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaks


def verify(*, unsealed_after: timedelta = timedelta(minutes=10), chunk_size: int = 2000) -> Verification:
    """Recompute the whole chain in ``seq`` order and return every break, plus the unsealed
    records that occurred more than ``unsealed_after`` ago (the sealer is not running).  Seals
    nothing."""
    result = Verification()
    anchor = latest_anchor()
    expected_seq, expected_prev = (anchor["anchor_seq"] + 1, anchor["anchor_hash"]) if anchor else (1, GENESIS)
    first = True
    rows = AuditRecord.records.filter(seq__isnull=False).order_by("seq").values(*_CONTENT, "seq", "prev_hash",
                                                                                 "record_hash")
    for row in rows.iterator(chunk_size=chunk_size):
        result.checked += 1
        seq = row["seq"]
        if seq != expected_seq:
            kind = "start" if first else "gap"
            result.breaks.append(Break(kind, seq, row["id"], f"expected seq {expected_seq}: records "
                                       f"{expected_seq}..{seq - 1} are missing" if seq > expected_seq
                                       else f"expected seq {expected_seq}"))
        if row["prev_hash"] != expected_prev:
            kind = "start" if first else "link"
            result.breaks.append(Break(kind, seq, row["id"], "prev_hash is not the hash of the record before"))
        if record_hash(row["prev_hash"], row) != row["record_hash"]:
            result.breaks.append(Break("hash", seq, row["id"], "the content does not match record_hash"))
        first = False
        expected_seq, expected_prev = seq + 1, row["record_hash"]
    cutoff = timezone.now() - unsealed_after
    for record_id in AuditRecord.records.filter(seq__isnull=True, occurred_at__lt=cutoff).order_by("id").values_list(
            "id", flat=True):
        result.breaks.append(Break("unsealed", None, record_id, f"not sealed although older than {unsealed_after}"))
    return result


# How many breaks a ChainCheck keeps (the count is always whole).
KEPT_BREAKS = 20


def check() -> ChainCheck:
    """:func:`verify` the whole chain and keep the result (the audit page shows the latest one):
    the periodic task ``audit.verify`` and ``manage.py verify_audit`` call it."""
    started = timezone.now()
    clock = time.monotonic()
    result = verify()
    return ChainCheck.objects.create(
        checked_at=started, checked=result.checked, break_count=len(result.breaks),
        breaks=[{"kind": b.kind, "seq": b.seq, "record_id": b.record_id, "message": b.message}
                for b in result.breaks[:KEPT_BREAKS]],
        seconds=round(time.monotonic() - clock, 3))


def last_check() -> ChainCheck | None:
    return ChainCheck.objects.order_by("-checked_at", "-id").first()


def purge(before: datetime, *, actor: str, actor_kind: str = events.SYSTEM) -> int:
    """Delete the sealed records that occurred before ``before`` and return how many.

    Only a prefix of the chain is deleted (every record up to the first one, in seq order, that
    is not older than ``before``), so that the rest remains one chain, and nothing after the
    lowest cursor of the export (:func:`audit.exports.lowest_cursor`): a record leaves the trail
    only once every Audit Record Repository has it.  In the same transaction a
    record (Audit Log Used, action D) says who purged, how many, and the seq and hash of the last
    record purged (the anchor from which :func:`verify` continues).
    """
    with transaction.atomic():
        _lock()
        sealed = AuditRecord.records.filter(seq__isnull=False)
        keep_from = sealed.filter(occurred_at__gte=before).order_by("seq").values_list("seq", flat=True).first()
        doomed = sealed.filter(occurred_at__lt=before)
        if keep_from is not None:
            doomed = doomed.filter(seq__lt=keep_from)
        exported_up_to = exports.lowest_cursor()
        if exported_up_to is not None:
            doomed = doomed.filter(seq__lte=exported_up_to)
        last = doomed.order_by("-seq").values_list("seq", "record_hash").first()
        if last is None:
            return 0
        anchor_seq, anchor_hash = last
        with connection.cursor() as cursor:
            _purge_flag(cursor, on=True)
            cursor.execute("DELETE FROM audit_auditpatient WHERE record_id IN "
                           "(SELECT id FROM audit_auditrecord WHERE seq <= %s)", [anchor_seq])
            cursor.execute("DELETE FROM audit_auditrecord WHERE seq <= %s", [anchor_seq])
            count = cursor.rowcount
            _purge_flag(cursor, on=False)
        # Written even with AUDIT_ENABLED off: without its anchor the rest of the chain cannot be verified.
        trail.write(events.AUDIT_LOG_USED, action=events.DELETE, actor=actor, actor_kind=actor_kind,
               detail={"purged": count, "before": before.astimezone(UTC).isoformat(),
                       "anchor_seq": anchor_seq, "anchor_hash": anchor_hash})
    return count


def _purge_flag(cursor, *, on: bool) -> None:
    """Let the DELETE triggers of migration 0002 through, for this transaction only."""
    if connection.vendor == "postgresql":
        cursor.execute("SELECT set_config('audit.purge', %s, true)", ["on" if on else "off"])
    elif on:
        cursor.execute("INSERT INTO audit_purge_flag (active) VALUES (1)")
    else:
        cursor.execute("DELETE FROM audit_purge_flag")


def retention_cutoff(days: int, now: datetime | None = None) -> datetime | None:
    """The ``before`` of the daily purge for AUDIT_RETENTION_DAYS = ``days`` (None: keep for ever)."""
    if days <= 0:
        return None
    return (now or timezone.now()) - timedelta(days=days)
