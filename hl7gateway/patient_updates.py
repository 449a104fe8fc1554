"""Patient changes forwarded to an archive that takes HL7: ADT^A08 and ADT^A40 (HL7 v2.5.1).

IHE Radiology RAD-12 Patient Update: the department system passes on the demographics update
(A08, "update patient information", HL7 v2.5.1 section 3.3.8, message structure ADT_A01) and
the merge (A40, "merge patient - patient identifier list", section 3.3.40, structure ADT_A39)
to the image archive, so that the VNA's copy of the patient's studies names the patient as the
engine does.  The message carries the patient as the engine holds it after the change, not the
message that caused it: PID-3 the patient's current identifiers (those retired into it by a
merge left out), PID-5 name, PID-7 birth date, PID-8 sex.  MSH-3 / MSH-4 are our application
and facility (``HL7_RECEIVING_APPLICATION`` / ``HL7_RECEIVING_FACILITY``), as in every message
we send.  Rendered from plain values (``PatientUpdateContent``, built by
``hl7gateway.outbox.content.content_for_patient_update``) with the ORU^R01's escaping and data
types.  Layout (docs/hl7-interface.md 2.8)::

    MSH  MSH-9 ADT^A08^ADT_A01 or ADT^A40^ADT_A39, MSH-10 stable control ID, MSH-12 2.5.1,
         MSH-18 UNICODE UTF-8, original acknowledgement mode
    EVN  EVN-1 A08 / A40, EVN-2 when the change was applied
    PID  PID-1 1, PID-3 current identifiers (CX), PID-5 name, PID-7 birth date, PID-8 sex
    PV1  A08 only (required by ADT_A01): PV1-1 1, PV1-2 N (not applicable, table 0004)
    MRG  A40 only: MRG-1 the retired identifier (ID^^^assigning authority)
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field
from datetime import date, datetime

from hl7gateway.oru import (
    MessageHeader,
    PatientIdentifier,
    Person,
    _segment,
    cx,
    hl7_ts,
    msh_segment,
    pid_segment,
)

A08 = "A08"
A40 = "A40"
EVENTS = (A08, A40)
VERSION = "2.5.1"
#: MSH-9 with its message structure (HL7 v2.5.1 chapter 3: A08 uses ADT_A01, A40 uses ADT_A39).
MESSAGE_TYPES = {A08: "ADT^A08^ADT_A01", A40: "ADT^A40^ADT_A39"}


@dataclass(frozen=True)
class PatientUpdateContent:
    """The patient after the change, and for a merge the identifier it retired."""

    event: str
    patient_identifiers: tuple[PatientIdentifier, ...] = ()
    patient_name: Person = field(default_factory=Person)
    patient_birth_date: date | None = None
    patient_sex: str = ""
    recorded_at: datetime | None = None  # EVN-2
    retired_identifier: PatientIdentifier | None = None  # MRG-1 (A40)


def render_segments(content: PatientUpdateContent, header: MessageHeader, *, time_zone: str = "UTC") -> list[str]:
    """The segments of the ADT^A08 / ADT^A40, each a str without the terminating CR."""
    if content.event not in EVENTS:
        raise ValueError(f"event must be one of {EVENTS}, not {content.event!r}")
    if content.event == A40 and (content.retired_identifier is None or not content.retired_identifier.id_number):
        raise ValueError("an A40 names the retired identifier (MRG-1)")
    if not any(i.id_number for i in content.patient_identifiers):
        raise ValueError("PID-3 (patient identifier list) is required")
    if not header.message_control_id:
        raise ValueError("MSH-10 (message control ID) is required")
    tz = zoneinfo.ZoneInfo(time_zone)
    segments = [
        msh_segment(header, MESSAGE_TYPES[content.event], tz, version=VERSION),
        _segment("EVN", {1: content.event, 2: hl7_ts(content.recorded_at or header.created_at, tz)}),
        pid_segment(content),
    ]
    if content.event == A08:
        segments.append(_segment("PV1", {1: "1", 2: "N"}))
    else:
        segments.append(_segment("MRG", {1: cx(content.retired_identifier)}))
    return segments


def render_patient_update(content: PatientUpdateContent, header: MessageHeader, *, time_zone: str = "UTC") -> str:
    """The message as text: segments each terminated by CR (HL7 v2.5.1 chapter 2)."""
    return "\r".join(render_segments(content, header, time_zone=time_zone)) + "\r"
