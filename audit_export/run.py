"""The export of the audit trail to the Audit Record Repository: seal, then send after the cursor.

``export_pending(sender)`` is what the beat task ``audit_export.export`` and ``manage.py
audit_export`` run.  It seals what is committed (``audit.chain.seal``: the repository receives
records in chain order), then repeats, one batch per transaction:

1. lock the repository's cursor row (``audit.models.AuditExport``) with SKIP LOCKED, so that one
   exporter at a time sends to a repository and a second one leaves at once;
2. read the sealed records after the cursor in ``seq`` order and send them
   (``audit_export.export.export_batch``);
3. move the cursor to the last seq done, and commit.

Guarantees: a record is never removed from the trail by the export (the records are the outbox;
the retention purge keeps everything after the lowest cursor).  Over TCP and TLS every record
reaches the repository at least once and in seq order: the cursor moves only past a batch the
repository's TCP stack acknowledged, and a crash or a lost connection between sending and
committing sends that batch again.  An unreachable repository moves nothing: the cursor waits,
``failing_since`` and ``last_error`` say since when and why, and the backlog grows
(``audit.exports.backlog``), which the console shows and the ``audit_backlog`` alarm watches.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit import chain, exports
from audit.models import AuditExport, AuditRecord
from project.audit_repository import Destination

from .export import FIELDS, export_batch
from .message import Engine
from .syslog import SyslogSender

log = logging.getLogger(__name__)

BATCH_SIZE = 500


@dataclass(frozen=True)
class Outcome:
    repository: str
    sent: int  # records the cursor moved past in this run
    cursor: int  # the cursor after the run
    pending: int  # records still after the cursor (including any not sealed yet)
    error: str = ""  # why the export stopped short ("" when everything sealed was sent)
    busy: bool = False  # another exporter held the cursor: this run sent nothing


def repository_name(destination: Destination) -> str:
    """The cursor's key: the repository's host and port (a change of transport keeps the cursor)."""
    host = f"[{destination.host}]" if ":" in destination.host else destination.host
    return f"{host}:{destination.port}"


def export_pending(sender: SyslogSender, *, batch_size: int = BATCH_SIZE, engine: Engine | None = None,
                   max_batches: int | None = None) -> Outcome:
    """Seal, then send every sealed record after the cursor (see the module's docstring)."""
    while chain.seal() > 0:
        pass
    engine = engine or Engine.from_settings()
    destination = sender.destination
    name = repository_name(destination)
    AuditExport.objects.get_or_create(name=name, defaults={"url": str(destination)})
    sent, error, batches = 0, "", 0
    while max_batches is None or batches < max_batches:
        batches += 1
        with transaction.atomic():
            row = AuditExport.objects.select_for_update(skip_locked=True).filter(name=name).first()
            if row is None:
                return Outcome(name, sent, _cursor(name), exports.backlog(_cursor(name)).records, busy=True)
            records = list(AuditRecord.records.filter(seq__gt=row.last_seq).order_by("seq")
                           .values(*FIELDS)[:batch_size])
            if not records:
                break
            done = export_batch(records, sender, engine)
            now = timezone.now()
            if done is not None:
                sent += sum(1 for r in records if r["seq"] <= done)
                row.last_seq, row.last_sent_at = done, now
            complete = done == records[-1]["seq"]
            if complete:
                if row.failing_since is not None:
                    log.info("audit export to %s works again after failing since %s", name, row.failing_since)
                row.last_error, row.failing_since = "", None
            else:
                error = (sender.last_error or f"{destination}: not every message was accepted")[:500]
                if row.failing_since is None:
                    # Names the repository and the socket error only; the records wait in the trail.
                    log.warning("audit export to %s fails, the cursor waits at seq %s: %s", name, row.last_seq, error)
                row.last_error, row.failing_since = error, row.failing_since or now
            row.url = str(destination)
            row.save(update_fields=["last_seq", "last_sent_at", "last_error", "failing_since", "url"])
        if not complete or len(records) < batch_size:
            break
    cursor = _cursor(name)
    return Outcome(name, sent, cursor, exports.backlog(cursor).records, error)


def _cursor(name: str) -> int:
    return AuditExport.objects.filter(name=name).values_list("last_seq", flat=True).first() or 0


_SENDER: tuple[int, str, SyslogSender] | None = None


def configured_sender() -> SyslogSender | None:
    """The sender to AUDIT_REPOSITORY_URL of this process (None: no repository), kept between
    runs so that its connection is reused; a new one after a fork or a change of the setting."""
    global _SENDER
    url = settings.AUDIT_REPOSITORY_URL
    if not url:
        return None
    if _SENDER is None or _SENDER[0] != os.getpid() or _SENDER[1] != url:
        if _SENDER is not None and _SENDER[0] == os.getpid():
            _SENDER[2].close()
        _SENDER = (os.getpid(), url, SyslogSender.from_settings())
    return _SENDER[2]
