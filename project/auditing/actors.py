"""Who acts: the active participant of an audit record (DICOM PS3.15 A.5.2, IHE ATNA).

Who acted is not a parameter of every service but a context the adapter sets with
:func:`acting` (the web middleware: the signed-in user and the client address; the HL7
intake: MSH-3^MSH-4 with the message control ID).  Without one the actor is the engine itself
(actor kind "system").  A context variable, so that each thread and each task has its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from project.auditing import events


@dataclass(frozen=True)
class Actor:
    """The active participant of PS3.15 A.5.2: UserID (``name``) of ``kind``, from ``source_address``;
    ``detail`` goes into every record made on its behalf (the HL7 message control ID)."""

    name: str
    kind: str
    source_address: str = ""
    detail: dict = field(default_factory=dict)


ENGINE = Actor("pacs", events.SYSTEM)

_actor: ContextVar[Actor | None] = ContextVar("ris_audit_actor", default=None)


@contextmanager
def acting(name: str, kind: str, *, source_address: str = "", detail: dict | None = None) -> Iterator[Actor]:
    """Everything changed inside is recorded as done by this actor."""
    actor = Actor(name or "unknown", kind, source_address, dict(detail or {}))
    token = _actor.set(actor)
    try:
        yield actor
    finally:
        _actor.reset(token)


def current_actor(fallback: str = "") -> Actor:
    """The actor of the context; else the engine (named ``fallback`` when given, e.g. the calling
    process or the AE title a service was handed)."""
    actor = _actor.get()
    if actor is not None:
        return actor
    return Actor(fallback, events.SYSTEM) if fallback else ENGINE


def hl7_actor_name(sending_application: str, sending_facility: str) -> str:
    """UserID of an HL7 peer (PS3.15 A.5.2): MSH-3 ^ MSH-4."""
    return f"{sending_application}^{sending_facility}"
