"""Inbound message handling: one MLLP payload in, one ACK out (persist before acknowledging).

``handle_payload`` first asks the sender policy (``hl7gateway.senders``): a refused message is
answered AR and kept in the log as REFUSED (or, past ``HL7_REFUSED_LOG_LIMIT`` an hour from one
address, only counted in ``InboundRefusal``).  Then it counts the message's structure
(``hl7gateway.limits``), parses and maps it (pure), and in ONE outermost transaction
(``transaction.atomic(durable=True)``) checks the duplicate key (MSH-3, MSH-4, MSH-10), applies
the commands through the ``ris`` services and stores the raw message with its ACK and effect.
Only after the commit does the caller write the ACK.  When the database fails nothing is
acknowledged positively: the sender gets AE (207) and resends later.
"""

from __future__ import annotations

import hashlib
import logging
import re

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F

from hl7gateway import auditing as hl7_auditing
from hl7gateway import limits, refusals, senders
from hl7gateway.acks import build_ack, encode_ack
from hl7gateway.mapping import map_message
from hl7gateway.models import InboundMessage
from hl7gateway.parsing import MSH, HL7Error, parse, read_msh
from project.auditing import events
from project.auditing.actors import acting, hl7_actor_name
from project.text import no_nul
from ris import auditing
from ris.commands import MergePatients, OrderCommand, RegisterPatient, UpdatePatient
from ris.errors import DomainError
from ris.services import orders, patients, pg

log = logging.getLogger("hl7gateway.intake")

_PID3 = re.compile(rb"(?:^|[\r\n])PID\|[^|\r\n]*\|[^|\r\n]*\|([^|^~\r\n]*)")


def apply_commands(commands: list) -> dict:
    """Hand each command to its domain service; return the combined effect."""
    effect: dict = {"results": []}
    for cmd in commands:
        if isinstance(cmd, OrderCommand):
            result = orders.apply_order(cmd)
        elif isinstance(cmd, RegisterPatient):
            result = patients.register_patient(cmd)
        elif isinstance(cmd, UpdatePatient):
            result = patients.update_patient(cmd)
        elif isinstance(cmd, MergePatients):
            result = patients.merge_patients(cmd)
        else:  # pragma: no cover - mapping returns only the types above
            raise TypeError(f"no service for {type(cmd).__name__}")
        effect["results"].append(result)
    return effect


def _patient_id(raw: bytes, commands: list) -> str:
    for cmd in commands:
        data = getattr(cmd, "patient", None) or getattr(cmd, "survivor", None)
        if data is not None:
            return data.primary.id_number[:64]
    m = _PID3.search(raw)
    return no_nul(m.group(1).decode("latin-1")[:64]) if m else ""


def _accessions(commands: list, effect: dict) -> str:
    found: list[str] = []
    for result in effect.get("results", []):
        found += result.get("accession_numbers", [])
    for cmd in commands:
        for proc in getattr(cmd, "procedures", []):
            if proc.accession_number:
                found.append(proc.accession_number)
    return " ".join(dict.fromkeys(found))[:255]


def _row(raw: bytes, msh: MSH | None, peer: str, digest: str, charset: str) -> InboundMessage:
    m = msh or MSH()
    return InboundMessage(
        peer=peer[:64], sending_application=m.msh_3[:180], sending_facility=m.msh_4[:180],
        receiving_application=m.msh_5[:180], receiving_facility=m.msh_6[:180], message_control_id=m.msh_10[:199],
        message_type=m.message_type[:20], version_id=m.version[:20], character_set=charset[:32], raw=raw,
        content_sha256=digest,
    )


def _finish(row: InboundMessage, msh: MSH | None, ack_code: str, status: str, *, error: HL7Error | DomainError |
            None = None, error_text: str = "") -> bytes:
    code = getattr(error, "code", None)
    location = getattr(error, "location", "") or ""
    text = error_text or (str(error) if error else "")
    ack = encode_ack(build_ack(msh, ack_code, error_code=code, error_location=location, error_text=text), msh)
    row.status, row.ack_code, row.ack = status, ack_code, ack
    row.error_code = str(code) if code is not None else ""
    row.error_location, row.error_text = location[:64], text
    if row.pk is None:
        _insert(row)
    else:  # pragma: no cover - every caller passes a new row
        row.save()
    return ack


_INSERT_SQL: str | None = None


def _insert(row: InboundMessage) -> None:
    """INSERT the row: on PostgreSQL one ``INSERT ... RETURNING id`` built from the model's fields
    (the values prepared by the fields themselves, without ``Model.save``'s machinery)."""
    global _INSERT_SQL
    if connection.vendor != "postgresql":
        row.save(force_insert=True)
        return
    fields = _INSERT_FIELDS
    if _INSERT_SQL is None:
        _INSERT_SQL = (f"INSERT INTO {InboundMessage._meta.db_table} ({', '.join(f.column for f in fields)}) "
                       f"VALUES ({', '.join(['%s'] * len(fields))}) RETURNING id")
    values = [f.get_db_prep_save(f.pre_save(row, True), connection) for f in fields]
    with pg.cursor() as cursor:
        cursor.execute(_INSERT_SQL, values)
        row.pk = cursor.fetchone()[0]


_INSERT_FIELDS = [f for f in InboundMessage._meta.concrete_fields if not f.primary_key]

# The stored original of a duplicate key (MSH-3, MSH-4, MSH-10), locked: the same predicate as
# the partial unique index uniq_inbound_msh_key.
_ORIGINAL_SQL = (
    f"SELECT id, content_sha256, ack FROM {InboundMessage._meta.db_table} "
    "WHERE sending_application = %s AND sending_facility = %s AND message_control_id = %s "
    "AND message_control_id <> '' AND replay_of_id IS NULL "
    f"AND status NOT IN ('{InboundMessage.STATUS_COLLISION}', '{InboundMessage.STATUS_REFUSED}') "
    "LIMIT 1 FOR UPDATE"
)


def _find_original(msh: MSH) -> InboundMessage | None:
    key = (msh.msh_3[:180], msh.msh_4[:180], msh.msh_10[:199])
    if connection.vendor == "postgresql":
        with pg.cursor() as cursor:
            cursor.execute(_ORIGINAL_SQL, key)
            found = cursor.fetchone()
        return None if found is None else InboundMessage(pk=found[0], content_sha256=found[1], ack=found[2])
    return (InboundMessage.objects.select_for_update()
            .filter(sending_application=key[0], sending_facility=key[1], message_control_id=key[2],
                    replay_of__isnull=True)
            .exclude(status__in=[InboundMessage.STATUS_COLLISION, InboundMessage.STATUS_REFUSED])
            .only("pk", "content_sha256", "ack").first())


def _store_refusal(raw: bytes, msh: MSH | None, peer: str, error: HL7Error) -> bytes:
    """AR for a message the sender policy refuses; kept whole up to the hourly limit per address."""
    address = senders.address_of(peer)
    header = msh or MSH()
    with transaction.atomic(durable=True):
        refused = refusals.count(address, msh, error.text)
        hl7_auditing.sender_refused(address, msh, error.text)  # queued: written after the AR is sent
        if refused <= settings.HL7_REFUSED_LOG_LIMIT:
            log.warning("message refused by the sender policy: AR sent",
                        extra={"peer": peer, "sender": f"{header.msh_3}^{header.msh_4}",
                               "message_type": header.message_type, "error_code": error.code})
            row = _row(raw, msh, peer, hashlib.sha256(raw).hexdigest(), "")
            return _finish(row, msh, "AR", InboundMessage.STATUS_REFUSED, error=error)
    if refused == settings.HL7_REFUSED_LOG_LIMIT + 1:
        log.warning("HL7_REFUSED_LOG_LIMIT reached: further refused messages from this address are only counted "
                    "this hour", extra={"peer": peer, "limit": settings.HL7_REFUSED_LOG_LIMIT})
    return encode_ack(build_ack(msh, "AR", error_code=error.code, error_location=error.location,
                                error_text=error.text), msh)


def _store_and_apply(raw: bytes, peer: str, replay_of: int | None = None) -> bytes:
    msh = read_msh(raw)
    if peer and replay_of is None:
        # The policy is about network senders: an operator's replay (monitoring.replay) or a
        # message handed in by the process itself (no peer) is not one.
        refusal = senders.check(msh, peer)
        if refusal is not None:
            return _store_refusal(raw, msh, peer, refusal)
    digest = hashlib.sha256(raw).hexdigest()
    commands: list = []
    parse_error: HL7Error | None = None
    charset = ""
    try:
        parse_error = limits.check(raw, msh)
        if parse_error is None:
            parsed = parse(raw)
            charset = parsed.charset
            commands = map_message(parsed)
    except HL7Error as exc:
        parse_error = exc
    with transaction.atomic(durable=True):
        # A replay (an operator reprocessing a stored message) is a new row with replay_of set: not
        # a duplicate of its original.
        if msh is not None and msh.msh_10 and replay_of is None:
            original = _find_original(msh)
            if original is not None:
                if original.content_sha256 == digest:
                    InboundMessage.objects.filter(pk=original.pk).update(duplicate_count=F("duplicate_count") + 1)
                    log.info("duplicate message answered with the stored ACK",
                             extra={"control_id": msh.msh_10, "peer": peer, "inbound": original.pk})
                    return bytes(original.ack)
                row = _row(raw, msh, peer, digest, charset)
                row.patient_id = _patient_id(raw, commands)
                log.warning("sender error: control ID reused with other content",
                            extra={"control_id": msh.msh_10, "sender": msh.msh_3, "peer": peer, "inbound": original.pk})
                err = HL7Error(f"message control ID {msh.msh_10} was already used (inbound message "
                               f"{original.pk}) for a message with other content", code=205, location="MSH^1^10")
                return _finish(row, msh, "AE", InboundMessage.STATUS_COLLISION, error=err)
        row = _row(raw, msh, peer, digest, charset)
        row.replay_of_id = replay_of
        row.patient_id = _patient_id(raw, commands)
        if parse_error is not None:
            row.accession_numbers = _accessions(commands, {})
            status = InboundMessage.STATUS_REJECTED if parse_error.ack_code == "AR" else InboundMessage.STATUS_ERROR
            return _finish(row, msh, parse_error.ack_code, status, error=parse_error)
        # No savepoint here (one round trip less per message): an application error aborts the
        # whole transaction, and the message is then stored with its AE in a second one.
        # The audit records of what the message changed (patients, orders, steps) are gathered and
        # written in one statement, in this transaction; the actor is the sender (MSH-3^MSH-4).
        with _acting_sender(msh, replay_of), auditing.collecting():
            effect = apply_commands(commands)
            auditing.write_collected()
        row.effect = effect
        row.accession_numbers = _accessions(commands, effect)
        return _finish(row, msh, "AA", InboundMessage.STATUS_APPLIED)


def _acting_sender(msh: MSH | None, replay_of: int | None):
    """The HL7 peer as the actor of the changes (PS3.15 A.5.2: UserID MSH-3^MSH-4), with the message
    control ID (MSH-10) in each record's detail."""
    m = msh or MSH()
    detail = {"message_control_id": m.msh_10, "message_type": m.message_type}
    if replay_of is not None:
        detail["replay_of"] = replay_of
    return acting(hl7_actor_name(m.msh_3, m.msh_4), events.HL7, detail=detail)


def _store_refused(raw: bytes, peer: str, error: DomainError, replay_of: int | None = None) -> bytes:
    """Store a message whose effect was rolled back, with its AE (own durable transaction)."""
    msh = read_msh(raw)
    commands: list = []
    charset = ""
    try:
        parsed = parse(raw)
        charset = parsed.charset
        commands = map_message(parsed)
    except HL7Error:
        pass
    with transaction.atomic(durable=True):
        row = _row(raw, msh, peer, hashlib.sha256(raw).hexdigest(), charset)
        row.replay_of_id = replay_of
        row.patient_id = _patient_id(raw, commands)
        row.accession_numbers = _accessions(commands, {})
        return _finish(row, msh, "AE", InboundMessage.STATUS_ERROR, error=error)


def handle_payload(raw: bytes, peer: str = "", *, replay_of: int | None = None) -> bytes:
    """The ACK (unframed bytes) for one MLLP payload, after its storage was committed.

    ``replay_of``: the id of a stored message an operator reprocesses (monitoring.replay); the
    new row points at it and skips the duplicate check (the original stays unchanged).

    Database unavailable: AE 207 built from the MSH, nothing stored (the sender resends).
    """
    for attempt in range(3):
        try:
            try:
                return _store_and_apply(raw, peer, replay_of)
            except DomainError as exc:
                return _store_refused(raw, peer, exc, replay_of)
            except DatabaseError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bug must become AE 207, never a dropped message
                log.exception("error applying message", extra={"peer": peer})
                return _store_refused(raw, peer, DomainError(f"application internal error: {type(exc).__name__}"),
                                      replay_of)
        except IntegrityError:
            # Another connection stored the same key (or created the same row) at the same time:
            # run again -- it is now a duplicate, or the conflict is reported as an application error.
            log.warning("integrity conflict, retrying", extra={"peer": peer, "attempt": attempt})
            continue
        except DatabaseError as exc:
            return database_unavailable_ack(raw, exc)
    return database_unavailable_ack(raw, None, text="conflicting concurrent writes; resend the message")


def database_unavailable_ack(raw: bytes, exc: Exception | None, *, text: str = "") -> bytes:
    log.error("database unavailable: message not stored, answered AE", extra={"error": str(exc)[:200]})
    try:
        connection.close()
    except DatabaseError:
        pass
    msh = read_msh(raw)
    text = text or "database unavailable: message not stored; resend it later"
    return encode_ack(build_ack(msh, "AE", error_code=207, error_location="", error_text=text), msh)


def handle_oversize(head: bytes, size: int, limit: int, peer: str = "") -> bytes:
    """AR for a frame above ``HL7_MAX_FRAME_BYTES``; the first bytes are stored for the log."""
    msh = read_msh(head)
    text = f"message larger than the limit of {limit} bytes (at least {size} bytes); first {len(head)} bytes stored"
    err = HL7Error(text, code=207, location="", ack_code="AR")
    try:
        with transaction.atomic(durable=True):
            row = _row(head, msh, peer, hashlib.sha256(head).hexdigest(), "")
            row.message_control_id = ""  # truncated: not a duplicate key of anything
            return _finish(row, msh, "AR", InboundMessage.STATUS_REJECTED, error=err)
    except DatabaseError as exc:
        return database_unavailable_ack(head, exc, text=text)
