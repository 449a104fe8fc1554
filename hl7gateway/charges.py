"""Charge posting to billing: DFT^P03 (HL7 v2.5.1 chapter 6, "post detail financial transaction";
v2.3.1 the same message), IHE Radiology RAD-35 Charge Posted.

The department (order filler) posts what it did to the billing system: the *technical* charge
(the exam was performed) when the study is complete -- the same event that tells the order
placer ORC-5 ``CM`` (``hl7gateway.order_status.EXAM_COMPLETE``) -- and the *professional* charge
(the reading) when the final report is signed (``REPORT_FINAL``).  This split follows the usual
technical / professional components RAD-35 posts at different times.  A charge is posted once
per requested procedure, charge kind and destination; when the order is cancelled after a
charge was posted, the credit (FT1-6 ``CD``, HL7 table 0017) reverses it, once.

Which charges a procedure posts is a setting per procedure code (``CHARGE_POSTING``,
``CHARGE_POSTING_BY_CODE``; ``parse_by_code`` is what the system check hl7gateway.E105 runs).

Layout (docs/hl7-interface.md 2.6)::

    MSH  MSH-9 DFT^P03^DFT_P03 (v2.5.1) / DFT^P03 (v2.3.1), MSH-10 stable control ID, MSH-12,
         MSH-18 UNICODE UTF-8 (v2.5.1) / UNICODE (v2.3.1), original acknowledgement mode
    EVN  EVN-1 P03, EVN-2 recorded date/time (required in v2.3.1, kept in v2.5.1)
    PID  as in the ORU^R01
    PV1  as in the ORU^R01; PV1-19 the visit number, the account billing posts to
    FT1  FT1-1 1, FT1-2 transaction ID (stable per procedure and charge kind; the credit carries
         the ID of the charge it reverses), FT1-4 transaction date, FT1-5 posting date,
         FT1-6 CG / CD, FT1-7 transaction code = the requested procedure code (CE), FT1-8 its
         text, FT1-10 quantity, FT1-20 performed by (technical: the performing physician where
         known; professional: the reading radiologist who signed), FT1-21 ordered by (the ordering
         provider), FT1-23 filler order number, FT1-25 procedure code (CE)
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field
from datetime import date, datetime

from hl7gateway import order_status
from hl7gateway.oru import (
    VERSIONS,
    MessageHeader,
    PatientIdentifier,
    Person,
    _components,
    _segment,
    ei,
    escape,
    hl7_ts,
    msh_segment,
    pid_segment,
    pv1_segment,
    xcn,
)

# --- the rule: which event posts which charge ------------------------------------------------
TECHNICAL = "technical"
PROFESSIONAL = "professional"
CHARGE_KINDS = (TECHNICAL, PROFESSIONAL)
#: FT1-6 transaction type (HL7 table 0017): a charge, and the credit that reverses it.
CHARGE = "CG"
CREDIT = "CD"
#: The order status event (``hl7gateway.order_status``) that posts each charge kind.
_EVENT_CHARGE = {order_status.EXAM_COMPLETE: TECHNICAL, order_status.REPORT_FINAL: PROFESSIONAL}
#: ``none`` in a setting: the code posts no charge.
NONE = "none"


def charge_for(event: str | None) -> str | None:
    """The charge kind an order status event posts (technical at exam complete, professional at
    the final report), or None."""
    return _EVENT_CHARGE.get(event) if event else None


#: The changes that reverse posted charges: the placer's ORC-1 ``CA`` (applied by
#: ``ris.services.orders``) as the requested procedure's workflow status (cancelled before the
#: exam) or as its placer status (cancelled after the exam was performed: the workflow status
#: stays COMPLETED, the technical charge already posted is reversed all the same).  A DC
#: (discontinued) reverses nothing: what was performed stays billed.
_CREDITING = frozenset({("requested_procedure", "CANCELED"), ("placer_status", "CANCELED")})


def credits(entity: str, to_status: str) -> bool:
    """True for a change that reverses posted charges (``_CREDITING``).  Unlike the order status,
    a cancellation the placer asked for is exactly what billing must hear of; a second one (the
    workflow and the placer status of one cancel) adds nothing (``enqueue_credits`` credits once)."""
    return (entity, to_status) in _CREDITING


def cancelled(workflow_status: str, placer_status: str) -> bool:
    """A procedure billing must not be charged for any more: cancelled by the placer, before or
    after the exam (its later charges, e.g. the professional one at a confirmed final report, are
    not posted)."""
    return "CANCELED" in (workflow_status, placer_status)


def parse_kinds(value: str, *, where: str) -> frozenset[str]:
    """``technical,professional`` (either, both, or ``none``) as a set of charge kinds."""
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    if names == [NONE]:
        return frozenset()
    bad = [n for n in names if n not in CHARGE_KINDS]
    if bad or not names:
        raise ValueError(f"{where}: {value.strip()!r} must be technical, professional, both "
                         f"(technical,professional) or none")
    return frozenset(names)


def parse_by_code(value: str) -> dict[str, frozenset[str]]:
    """``CHARGE_POSTING_BY_CODE``: ``CODE=kinds;CODE=kinds`` (``;`` between entries, ``,`` between
    kinds), e.g. ``CTHEAD=technical;XRCHEST=professional;MRKNEE=none``.  Raises ValueError naming
    the bad entry (the system check hl7gateway.E105)."""
    out: dict[str, frozenset[str]] = {}
    for entry in (e.strip() for e in (value or "").split(";")):
        if not entry:
            continue
        code, sep, kinds = entry.partition("=")
        code = code.strip()
        if not sep or not code:
            raise ValueError(f"entry {entry!r}: expected CODE=technical|professional|technical,professional|none")
        if code in out:
            raise ValueError(f"entry {entry!r}: code {code!r} is listed twice")
        out[code] = parse_kinds(kinds, where=f"entry {entry!r}")
    return out


def kinds_for(code: str, default: str, by_code: str) -> frozenset[str]:
    """The charge kinds a procedure code posts: its entry in ``by_code``, else ``default``.
    Settings that cannot be parsed post nothing (the system check refuses them at start)."""
    try:
        overrides = parse_by_code(by_code)
        return overrides[code] if code in overrides else parse_kinds(default, where="CHARGE_POSTING")
    except ValueError:
        return frozenset()


def transaction_id(requested_procedure_pk: int, kind: str) -> str:
    """FT1-2 (ST, 12 in v2.5.1): one per requested procedure and charge kind, the same for every
    destination and every resend, and the same on the credit that reverses the charge, so billing
    can pair them."""
    return f"{'T' if kind == TECHNICAL else 'P'}{requested_procedure_pk:011d}"


# --- the message --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChargeContent:
    """Everything one DFT^P03 says (plain values only)."""

    patient_identifiers: tuple[PatientIdentifier, ...]
    patient_name: Person
    patient_birth_date: date | None
    patient_sex: str
    visit_number: str = ""  # PV1-19: the account the charge is posted to
    patient_class: str = ""
    assigned_location: str = ""
    referring_physician: Person = field(default_factory=Person)
    charge_kind: str = TECHNICAL
    transaction_type: str = CHARGE  # FT1-6
    transaction_id: str = ""  # FT1-2
    transaction_at: datetime | None = None  # FT1-4: when the charged service happened
    posted_at: datetime | None = None  # FT1-5, EVN-2
    procedure_code_value: str = ""
    procedure_code_meaning: str = ""
    procedure_code_scheme: str = ""
    quantity: int = 1  # FT1-10
    performed_by: Person = field(default_factory=Person)  # FT1-20
    ordering_provider: Person = field(default_factory=Person)  # FT1-21
    filler_order_number: str = ""
    filler_namespace: str = ""


def message_type(version: str) -> str:
    """MSH-9: DFT^P03 with its message structure (MSH-9.3) in v2.5.1; DFT^P03 in v2.3.1."""
    return "DFT^P03^DFT_P03" if version == "2.5.1" else "DFT^P03"


def render_segments(content: ChargeContent, header: MessageHeader, *, time_zone: str = "UTC") -> list[str]:
    """The segments of the DFT^P03, each a str without the terminating CR."""
    if header.version not in VERSIONS:
        raise ValueError(f"unsupported version {header.version!r}; use one of {VERSIONS}")
    if content.transaction_type not in (CHARGE, CREDIT):
        raise ValueError(f"FT1-6 must be {CHARGE} or {CREDIT}, not {content.transaction_type!r}")
    if not header.message_control_id:
        raise ValueError("MSH-10 (message control ID) is required")
    if not content.transaction_id:
        raise ValueError("FT1-2 (transaction ID) is required")
    tz = zoneinfo.ZoneInfo(time_zone)
    code = _components(content.procedure_code_value, content.procedure_code_meaning, content.procedure_code_scheme)
    return [
        msh_segment(header, message_type(header.version), tz),
        _segment("EVN", {1: "P03", 2: hl7_ts(content.posted_at or header.created_at, tz)}),
        pid_segment(content),
        pv1_segment(content),
        _segment("FT1", {
            1: "1",
            2: escape(content.transaction_id),
            4: hl7_ts(content.transaction_at, tz),
            5: hl7_ts(content.posted_at or header.created_at, tz),
            6: content.transaction_type,
            7: code,
            8: escape(content.procedure_code_meaning),
            10: str(content.quantity),
            20: xcn(content.performed_by),
            21: xcn(content.ordering_provider),
            23: ei(content.filler_order_number, content.filler_namespace),
            25: code,
        }),
    ]


def render_charge(content: ChargeContent, header: MessageHeader, *, time_zone: str = "UTC") -> str:
    """The message as text: segments each terminated by CR (HL7 v2.5.1 chapter 2)."""
    return "\r".join(render_segments(content, header, time_zone=time_zone)) + "\r"
