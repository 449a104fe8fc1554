"""Order status messages to the order placer: ORM^O01 (HL7 v2.3.1) or OMI^O23 (v2.5.1), ORC-1 ``SC``.

IHE Radiology Scheduled Workflow, RAD-3 Filler Order Management: the department (order filler)
tells the order placer (the EHR) what became of its order -- the exam started, the exam is
complete, a step was discontinued, the report is final.  HL7 v2.3.1 chapter 4 (ORM^O01) and
v2.5.1 chapter 4 (OMI^O23); ORC-1 ``SC`` "status changed" (HL7 table 0119), ORC-5 the new
order status (HL7 table 0038): ``IP`` in process, ``CM`` completed, ``DC`` discontinued.

The same message with ORC-1 ``SN`` ("send order number", HL7 v2.5.1 4.5.1.1) tells the placer of
an order the department created itself (``FILLER_ORDER``: an unordered study reconciled to its
patient, encounter-based imaging).  The placer answers ORR^O02 (v2.3.1) or ORG^O20 (v2.5.1) with
MSA-1 AA, ORC-1 ``NA`` ("number assigned") and ORC-2 the placer order number it assigned
(``read_order_answer``, ``filler_order_refusal``), which the engine stores on the order.

Which change causes which message is decided once, by ``event_for``; the message is rendered
by ``render_status`` from plain values (``StatusContent``; built from the database by
``hl7gateway.outbox.content.content_for_status``), like the ORU^R01 (``hl7gateway.oru``), whose
escaping and data types it shares.  Layout (docs/hl7-interface.md 2.4)::

    MSH  MSH-9 ORM^O01 (v2.3.1) / OMI^O23^OMI_O23 (v2.5.1), MSH-10 stable control ID, MSH-12,
         MSH-18 UNICODE UTF-8 (v2.5.1) / UNICODE (v2.3.1), original acknowledgement mode
    PID  as in the ORU^R01
    PV1  as in the ORU^R01
    ORC  ORC-1 SC (SN for a filler order), ORC-2 placer order number (empty in SN), ORC-3 filler
         order number, ORC-5 IP / CM / DC (SN: the order's status, SC / IP / CM / DC),
         ORC-9 date/time of the transaction (the change), ORC-12 ordering provider
    OBR  OBR-2, OBR-3, OBR-4 procedure code, OBR-7 exam start, OBR-16 ordering provider,
         OBR-24 RAD, OBR-25 F when the report is final;
         v2.3.1 only: OBR-18 accession number, OBR-19 requested procedure ID, OBR-20 step ID;
         SN in v2.5.1: OBR-18 accession number as well
    ZDS  v2.3.1 only: ZDS-1 Study Instance UID (the ZDS segment of IHE RAD TF-2, RAD-4)
    IPC  v2.5.1 only, one per scheduled step (v2.5.1 chapter 4, segment IPC): IPC-1 accession number, IPC-2
         requested procedure ID, IPC-3 Study Instance UID, IPC-4 step ID, IPC-5 modality,
         IPC-9 station AE title
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field
from datetime import date, datetime

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

# --- the rule: which change tells the placer what (IHE RAD-3) ---------------------------------
#: The events an order status message is sent for, each once per requested procedure and
#: destination (``OutboundMessage.status_event``), with its ORC-5 (HL7 table 0038) and OBR-25.
STARTED = "started"  # the first MPPS IN PROGRESS of the procedure (PS3.4 F.7.2.1)
EXAM_COMPLETE = "exam-complete"  # the study is complete (MPPS COMPLETED, or the quiet period)
DISCONTINUED = "discontinued"  # a step was discontinued (MPPS DISCONTINUED, PS3.4 F.7.2.2)
REPORT_FINAL = "report-final"  # the report was signed final (HL7 v2.5.1 table 0123: F)
FILLER_ORDER = "filler-order"  # the department created the order (ORC-1 SN, HL7 table 0119)
ORDER_STATUS = {STARTED: "IP", EXAM_COMPLETE: "CM", DISCONTINUED: "DC", REPORT_FINAL: "CM"}
RESULT_STATUS = {REPORT_FINAL: "F"}
#: ORC-1 of each event's message (HL7 table 0119): SN for a new filler order, else SC.
ORDER_CONTROL = {FILLER_ORDER: "SN"}
#: ORC-5 of an SN: the filler order's status now (requested procedure status -> HL7 table 0038).
FILLER_ORDER_STATUS = {"IN_PROGRESS": "IP", "COMPLETED": "CM", "DISCONTINUED": "DC", "CANCELED": "CA"}
ORC5_VALUES = ("SC", "IP", "CM", "DC", "CA")


def order_control(event: str) -> str:
    """ORC-1 of the message of ``event``: SN for a filler order, SC for a status change."""
    return ORDER_CONTROL.get(event, "SC")


def filler_order_status(requested_procedure_status: str) -> str:
    """ORC-5 of an SN: the order's status (HL7 table 0038), SC "in process, scheduled" until started."""
    return FILLER_ORDER_STATUS.get(requested_procedure_status, "SC")

#: (entity of ``ris.states.TABLES``, status moved to) -> event.  The requested procedure moves to
#: IN_PROGRESS once, at its first started step; the study (pacs) to COMPLETE when completion
#: decides it is; a step to DISCONTINUED by MPPS; the report to FINAL at its final signature.
_EVENTS = {
    ("requested_procedure", "IN_PROGRESS"): STARTED,
    ("study", "COMPLETE"): EXAM_COMPLETE,
    ("sps", "DISCONTINUED"): DISCONTINUED,
    ("report", "FINAL"): REPORT_FINAL,
}


def event_for(entity: str, from_status: str, to_status: str, *, placer_request: bool = False) -> str | None:
    """The order status event a status change causes, or None.

    A change the order placer asked for itself (an inbound ORC-1 DC, SC/IP ... applied by
    ``ris.services.orders``) is not echoed back: RAD-3 tells the placer what the filler did.
    """
    if placer_request:
        return None
    return _EVENTS.get((entity, to_status))


# --- the message --------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepValues:
    """One scheduled procedure step (an IPC segment in v2.5.1)."""

    step_id: str
    modality: str = ""
    station_ae_title: str = ""


@dataclass(frozen=True)
class StatusContent:
    """Everything one order status message says (plain values only)."""

    # PID / PV1 (as in the ORU^R01)
    patient_identifiers: tuple[PatientIdentifier, ...]
    patient_name: Person
    patient_birth_date: date | None
    patient_sex: str
    visit_number: str = ""
    patient_class: str = ""
    assigned_location: str = ""
    referring_physician: Person = field(default_factory=Person)
    # ORC / OBR
    order_control: str = "SC"  # ORC-1, HL7 table 0119: SC, or SN for a filler order
    order_status: str = "IP"  # ORC-5, HL7 table 0038
    transaction_at: datetime | None = None  # ORC-9: when the change happened
    result_status: str = ""  # OBR-25: F when the report is final, else empty
    placer_order_number: str = ""
    placer_namespace: str = ""
    filler_order_number: str = ""
    filler_namespace: str = ""
    procedure_code_value: str = ""
    procedure_code_meaning: str = ""
    procedure_code_scheme: str = ""
    observation_datetime: datetime | None = None  # OBR-7: the exam's start
    ordering_provider: Person = field(default_factory=Person)
    accession_number: str = ""
    requested_procedure_id: str = ""
    study_instance_uid: str = ""
    steps: tuple[StepValues, ...] = ()


#: The message (MSH-9.1^9.2) of each version.
MESSAGE_TYPES = {"2.3.1": "ORM^O01", "2.5.1": "OMI^O23"}


def message_type(version: str) -> str:
    """MSH-9: ORM^O01 in v2.3.1; OMI^O23 with its message structure in v2.5.1 (2.15.9.9)."""
    return "OMI^O23^OMI_O23" if version == "2.5.1" else "ORM^O01"


def render_segments(content: StatusContent, header: MessageHeader, *, time_zone: str = "UTC") -> list[str]:
    """The segments of the order status message, each a str without the terminating CR."""
    if header.version not in VERSIONS:
        raise ValueError(f"unsupported version {header.version!r}; use one of {VERSIONS}")
    if content.order_control not in ("SC", "SN"):
        raise ValueError(f"ORC-1 must be SC or SN, not {content.order_control!r}")
    allowed = ORC5_VALUES if content.order_control == "SN" else sorted(set(ORDER_STATUS.values()))
    if content.order_status not in allowed:
        raise ValueError(f"ORC-5 must be one of {list(allowed)}, not {content.order_status!r}")
    if not header.message_control_id:
        raise ValueError("MSH-10 (message control ID) is required")
    tz = zoneinfo.ZoneInfo(time_zone)
    v251 = header.version == "2.5.1"
    placer = ei(content.placer_order_number, content.placer_namespace)
    filler = ei(content.filler_order_number, content.filler_namespace)
    first_step = content.steps[0] if content.steps else StepValues(content.requested_procedure_id)
    obr = {
        1: "1",
        2: placer,
        3: filler,
        4: _components(content.procedure_code_value, content.procedure_code_meaning, content.procedure_code_scheme),
        7: hl7_ts(content.observation_datetime, tz),
        16: xcn(content.ordering_provider),
        24: "RAD",
        25: escape(content.result_status),
    }
    if not v251:
        # v2.3.1: the DICOM keys in OBR (IHE RAD TF-2, RAD-4); v2.5.1 carries them in IPC.
        obr.update({18: escape(content.accession_number), 19: escape(content.requested_procedure_id),
                    20: escape(first_step.step_id)})
    elif content.order_control == "SN":
        # A new filler order: the placer has never seen the accession number; OBR-18 (placer
        # field 1) names it in both versions, IPC-1 too in v2.5.1.
        obr[18] = escape(content.accession_number)
    segments = [
        msh_segment(header, message_type(header.version), tz),
        pid_segment(content),
        pv1_segment(content),
        _segment("ORC", {1: content.order_control, 2: placer, 3: filler, 5: content.order_status,
                         9: hl7_ts(content.transaction_at, tz), 12: xcn(content.ordering_provider)}),
        _segment("OBR", obr),
    ]
    if not v251:
        if content.study_instance_uid:
            segments.append(_segment("ZDS", {1: _components(content.study_instance_uid, header.sending_application,
                                                            "Application", "DICOM")}))
        return segments
    for step in content.steps or (first_step,):
        segments.append(_segment("IPC", {
            1: escape(content.accession_number),
            2: escape(content.requested_procedure_id),
            3: escape(content.study_instance_uid),
            4: escape(step.step_id),
            5: _components(step.modality, "", "DCM") if step.modality else "",
            9: escape(step.station_ae_title),
        }))
    return segments


def render_status(content: StatusContent, header: MessageHeader, *, time_zone: str = "UTC") -> str:
    """The message as text: segments each terminated by CR (HL7 v2.5.1 2.5.5)."""
    return "\r".join(render_segments(content, header, time_zone=time_zone)) + "\r"


# --- the order placer's answer to an SN (ORR^O02 / ORG^O20) ---------------------------------------
@dataclass(frozen=True)
class OrderAnswer:
    """What the order placer's answer to a filler order says (HL7 v2.5.1 4.4.2 ORG^O20,
    v2.3.1 4.4.2 ORR^O02): MSH-9, ORC-1 and ORC-2 (EI: number ^ namespace ID)."""

    message_type: str = ""
    order_control: str = ""
    placer_order_number: str = ""
    placer_namespace: str = ""


def read_order_answer(answer: bytes) -> OrderAnswer:
    """MSH-9, ORC-1 and ORC-2 of an answer, with its own separators (MSH-1, MSH-2); the
    components are unescaped.  Missing segments or fields read as empty."""
    text = answer.decode("utf-8", errors="replace")
    if not text.startswith("MSH") or len(text) < 8:
        return OrderAnswer()
    sep, comp, rep, esc = text[3], text[4], text[5], text[6]
    segments = [s.split(sep) for s in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s]
    msh = segments[0]
    orc = next((s for s in segments if s[0] == "ORC"), [])

    def field(seg: list[str], n: int) -> str:
        return seg[n] if len(seg) > n else ""

    placer = field(orc, 2).split(rep)[0].split(comp)
    return OrderAnswer(
        message_type=field(msh, 8).replace(comp, "^"),
        order_control=field(orc, 1).strip().upper(),
        placer_order_number=_unescape(placer[0].strip(), sep, comp, esc),
        placer_namespace=_unescape(placer[1].strip(), sep, comp, esc) if len(placer) > 1 else "",
    )


def _unescape(value: str, sep: str, comp: str, esc: str) -> str:
    for code, char in (("F", sep), ("S", comp), ("T", "&"), ("R", "~"), ("E", esc)):
        value = value.replace(f"{esc}{code}{esc}", char)
    return value


def filler_order_refusal(answer: OrderAnswer) -> str:
    """Why an answer accepted at MSA-1 (AA) does not accept the filler order, or "": it must
    say ORC-1 NA ("number assigned") and carry the placer order number in ORC-2.1."""
    if answer.order_control != "NA":
        return f"ORC-1 {answer.order_control or '(empty)'} is not NA (number assigned)"
    if not answer.placer_order_number:
        return "ORC-2 (placer order number) is empty"
    return ""
