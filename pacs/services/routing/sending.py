"""What a sender (``pacs.scu``, ``pacs.scu_dcmtk``, ``pacs.stow``) and ``transfers`` exchange:
the items to send, their outcomes, and the two kinds of failure.  Imports neither side."""

from __future__ import annotations

from dataclasses import dataclass


class TransientError(Exception):
    """Worth retrying: association refused or aborted, timeout, C-STORE status 0xA7xx (out of
    resources, PS3.4 B.2.3), HTTP 408/429/5xx."""


class PermanentError(Exception):
    """Not worth retrying: association rejected permanently (PS3.8 9.3.4), C-STORE status 0xA9xx
    or 0xCxxx, a SOP class the VNA does not accept, a certificate that does not verify."""


@dataclass(frozen=True)
class ItemToSend:
    item_id: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: str  # absolute


@dataclass(frozen=True)
class ItemOutcome:
    item_id: int
    ok: bool
    transient: bool = False
    reason: str = ""
