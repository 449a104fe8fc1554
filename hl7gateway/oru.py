"""ORU^R01 rendering: a signed report as an HL7 v2.5.1 (default) or v2.3.1 message.

Pure functions on plain values: ``render_oru(OruContent, ...) -> str``.  Nothing here
touches the database; ``hl7gateway.outbox.content.content_for_report_version`` builds the
``OruContent`` from a ``ris.ReportVersion``.

Message layout (HL7 v2.5.1 ch. 7.3.1 "ORU^R01"; IHE Radiology RAD-28 "Structured Report
Export" / RAD-128; docs/hl7-interface.md 2.2)::

    MSH  MSH-9 ORU^R01^ORU_R01 (v2.5.1) / ORU^R01 (v2.3.1), MSH-10 stable control ID,
         MSH-11 P, MSH-12 version, MSH-18 UNICODE UTF-8 (v2.5.1) / UNICODE (v2.3.1) (original acknowledgement mode:
         MSH-15/16 empty, one AA/AE/AR expected)
    PID  PID-3 every identifier as ID^^^assigning authority^type (CX), PID-5, PID-7, PID-8
    PV1  PV1-2 patient class (U when unknown), PV1-3, PV1-8, PV1-19 visit number
    ORC  ORC-1 RE, ORC-2 placer order number, ORC-3 filler order number, ORC-5 A / CM
    OBR  OBR-2, OBR-3, OBR-4 procedure code, OBR-7 exam time, OBR-16 ordering provider,
         OBR-18 accession number, OBR-19 requested procedure ID, OBR-22 result time,
         OBR-24 RAD, OBR-25 P / F / C, OBR-32 principal result interpreter
    OBX  one per text line: OBX-2 TX (or FT), OBX-3 18748-4^Diagnostic imaging study report^LN,
         OBX-11 = OBR-25
    OBX  OBX-2 ST, OBX-3 113014^DICOM Study^DCM, OBX-5 the Study Instance UID
    OBX  per destination (off by default): OBX-2 RP (reference pointer, HL7 v2.5.1 2A.65),
         OBX-3 VIEWER^Study in the image viewer^99PACS, OBX-5 url^MSH-3^TEXT^HTML
    OBX  per destination (off by default): OBX-2 RP, OBX-3 WADORS^Study by DICOMweb WADO-RS^99PACS,
         OBX-5 {WADO_RS_BASE_URL}/studies/{uid}^MSH-3^IM^DICOM (PS3.18 10.4.1)
    OBX  per destination (off by default): OBX-2 ED (encapsulated data, HL7 v2.5.1 2A.24),
         OBX-3 18748-4^Diagnostic imaging study report^LN, OBX-4 2,
         OBX-5 MSH-3^AP^PDF^Base64^the report as a PDF (``hl7gateway.report_pdf``)

Report text is escaped (HL7 v2.5.1 2.7.4 "Special characters"): ``\\`` -> ``\\E\\``,
``|`` -> ``\\F\\``, ``^`` -> ``\\S\\``, ``&`` -> ``\\T\\``, ``~`` -> ``\\R\\``; every other
value taken from the database is escaped the same way.  Control characters other than
tab (they would break MLLP framing or segment boundaries) become spaces; line breaks
split the text into one OBX per line.
"""

from __future__ import annotations

import base64
import re
import zoneinfo
from dataclasses import dataclass, field
from datetime import date, datetime

VERSIONS = ("2.5.1", "2.3.1")
RESULT_STATUSES = ("P", "F", "C", "X")
TEXT_VALUE_TYPES = ("TX", "FT")
CHARSET = "UNICODE UTF-8"
#: MSH-18 per version (HL7 table 0211): ``UNICODE UTF-8`` exists since v2.5; v2.3.1's table has
#: only ``UNICODE`` (ISO/IEC 10646), of which UTF-8 is the encoding we send.
CHARSETS = {"2.5.1": CHARSET, "2.3.1": "UNICODE"}
ENCODING_CHARACTERS = "^~\\&"

#: OBX-3 of the report text lines (LOINC).
REPORT_OBSERVATION_ID = ("18748-4", "Diagnostic imaging study report", "LN")
#: OBX-3 of the Study Instance UID (DICOM PS3.16 CID 7001 / DCM 113014).
STUDY_OBSERVATION_ID = ("113014", "DICOM Study", "DCM")
#: OBX-3 of the reference pointers to the study's images: local codes (HL7 table 0396 "99zzz").
VIEWER_OBSERVATION_ID = ("VIEWER", "Study in the image viewer", "99PACS")
WADO_RS_OBSERVATION_ID = ("WADORS", "Study by DICOMweb WADO-RS", "99PACS")
#: RP-3 type of data (HL7 table 0191) and RP-4 subtype (table 0291) of each pointer: a web page,
#: and DICOM objects (WADO-RS answers multipart/related; type=application/dicom, PS3.18 8.7.3).
VIEWER_POINTER_TYPE = ("TEXT", "HTML")
#: The report as a PDF (ED, 2A.24): OBX-4 sub-ID 2 (the text lines are sub-ID 1 of the same
#: observation), ED-2 type of data ``AP`` (other application data, table 0191), ED-3 subtype
#: ``PDF`` (table 0291), ED-4 encoding ``Base64`` (table 0299).
PDF_SUB_ID = "2"
PDF_DATA_TYPE = ("AP", "PDF", "Base64")
WADO_RS_POINTER_TYPE = ("IM", "DICOM")


@dataclass(frozen=True)
class PatientIdentifier:
    """PID-3 repetition (CX): ID number, assigning authority (PID-3.4), type code (PID-3.5)."""

    id_number: str
    assigning_authority: str = ""
    identifier_type_code: str = ""


@dataclass(frozen=True)
class Person:
    """A person in DICOM PN order (family^given^middle^prefix^suffix) with an optional ID."""

    family: str = ""
    given: str = ""
    middle: str = ""
    prefix: str = ""
    suffix: str = ""
    id_number: str = ""

    @classmethod
    def from_dicom_pn(cls, value: str, id_number: str = "") -> Person:
        """Read a DICOM PN (PS3.5 6.2.1, alphabetic group only) -- the form ``ris`` stores names in."""
        parts = (value or "").split("=")[0].split("^") + [""] * 5
        return cls(*(p.strip() for p in parts[:5]), id_number=id_number)

    @property
    def is_empty(self) -> bool:
        return not any((self.family, self.given, self.middle, self.prefix, self.suffix, self.id_number))


@dataclass(frozen=True)
class OruContent:
    """Everything one ORU^R01 says about one signed report version (plain values only)."""

    # PID
    patient_identifiers: tuple[PatientIdentifier, ...]
    patient_name: Person
    patient_birth_date: date | None
    patient_sex: str
    # PV1
    visit_number: str = ""
    patient_class: str = ""
    assigned_location: str = ""
    referring_physician: Person = field(default_factory=Person)
    # ORC / OBR
    placer_order_number: str = ""
    placer_namespace: str = ""
    filler_order_number: str = ""
    filler_namespace: str = ""
    procedure_code_value: str = ""
    procedure_code_meaning: str = ""
    procedure_code_scheme: str = ""
    observation_datetime: datetime | None = None  # OBR-7: when the exam was done
    ordering_provider: Person = field(default_factory=Person)
    accession_number: str = ""
    requested_procedure_id: str = ""
    # The report version
    result_status: str = "F"  # OBR-25 / OBX-11: P, F, C
    signer: Person = field(default_factory=Person)  # OBR-32
    signed_at: datetime | None = None  # OBR-22, OBR-32.2, OBX-19 (v2.5.1)
    text_lines: tuple[str, ...] = ()
    study_instance_uid: str = ""
    # The study's images (``project.links``); sent as RP OBX only to destinations that ask.
    viewer_url: str = ""
    wado_rs_url: str = ""


@dataclass(frozen=True)
class MessageHeader:
    """MSH values that belong to the message and the destination, not to the report."""

    message_control_id: str  # MSH-10: assigned once when the outbound row is created
    created_at: datetime  # MSH-7
    sending_application: str = "PACS"
    sending_facility: str = "RADIOLOGY"
    receiving_application: str = ""
    receiving_facility: str = ""
    version: str = "2.5.1"
    processing_id: str = "P"
    text_value_type: str = "TX"
    link_viewer: bool = False  # an RP OBX with the viewer URL (when there is one)
    link_wado_rs: bool = False  # an RP OBX with the WADO-RS study URL (when there is one)


# --- escaping (HL7 v2.5.1 section 2.7.4) --------------------------------------------------------
_ESCAPES = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\"}
_ESCAPE_RE = re.compile(r"[\\|^&~]")
# C0 controls except TAB, and DEL / C1 controls: would break framing (VT, FS) or segments (CR).
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def escape(value: object) -> str:
    """Escape the HL7 delimiters in a value (and blank out control characters)."""
    if value is None:
        return ""
    text = _CONTROL_RE.sub(" ", str(value))
    return _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(0)], text)


def unescape(value: str) -> str:
    """The inverse of ``escape`` for the five delimiter sequences (used by tests and tools)."""
    reverse = {v: k for k, v in _ESCAPES.items()}
    return re.sub(r"\\[EFSTR]\\", lambda m: reverse[m.group(0)], value)


def split_lines(text: str) -> list[str]:
    """Report text to lines: CR LF, CR and LF all end a line; trailing blank lines are dropped."""
    lines = re.split(r"\r\n|\r|\n", text or "")
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.rstrip() for line in lines]


# --- data types -------------------------------------------------------------------------------
def _components(*values: object) -> str:
    """Join escaped components with ``^`` and drop empty trailing ones."""
    parts = [escape(v) for v in values]
    while parts and parts[-1] == "":
        parts.pop()
    return "^".join(parts)


def _subcomponents(*values: object) -> str:
    parts = [escape(v) for v in values]
    while parts and parts[-1] == "":
        parts.pop()
    return "&".join(parts)


def hl7_ts(value: datetime | date | None, tz: zoneinfo.ZoneInfo | None = None) -> str:
    """TS / DTM: YYYYMMDDHHMMSS+ZZZZ in the department's zone (a date: YYYYMMDD)."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        if value.tzinfo is not None and tz is not None:
            value = value.astimezone(tz)
        text = value.strftime("%Y%m%d%H%M%S")
        if value.tzinfo is not None:
            text += value.strftime("%z")
        return text
    return value.strftime("%Y%m%d")


def xpn(person: Person) -> str:
    """XPN (PID-5): family^given^second and further given names^suffix^prefix."""
    return _components(person.family, person.given, person.middle, person.suffix, person.prefix)


def xcn(person: Person) -> str:
    """XCN (PV1-8, OBR-16, OBX-16): ID^family^given^second given^suffix^prefix."""
    if person.is_empty:
        return ""
    return _components(person.id_number, person.family, person.given, person.middle, person.suffix, person.prefix)


def cx(identifier: PatientIdentifier) -> str:
    """CX (PID-3): ID^check digit^check digit scheme^assigning authority^identifier type code."""
    return _components(identifier.id_number, "", "", identifier.assigning_authority, identifier.identifier_type_code)


def ei(number: str, namespace: str) -> str:
    """EI (ORC-2/3, OBR-2/3): entity identifier^namespace ID."""
    return _components(number, namespace)


def principal_result_interpreter(person: Person, signed_at: datetime | None, tz) -> str:
    """OBR-32 (NDL in v2.5.1, CM in v2.3.1): name as ID&family&given subcomponents ^ start time."""
    if person.is_empty:
        return ""
    name = _subcomponents(person.id_number, person.family, person.given, person.middle, person.suffix, person.prefix)
    return "^".join(p for p in (name, hl7_ts(signed_at, tz)) if p) if signed_at else name


# --- the message ------------------------------------------------------------------------------
def charset(version: str) -> str:
    """MSH-18 for an MSH-12 version: a value of that version's table 0211."""
    return CHARSETS.get(version, CHARSET)


def _segment(name: str, fields: dict[int, str]) -> str:
    """Build a segment from {field number: already-escaped value}; empty trailing fields dropped."""
    last = max((n for n, v in fields.items() if v), default=0)
    return "|".join([name] + [fields.get(i, "") for i in range(1, last + 1)])


def msh_segment(header: MessageHeader, message_type: str, tz: zoneinfo.ZoneInfo, *, version: str = "") -> str:
    """MSH (HL7 v2.5.1 2.14.9) of every message we send: MSH-3 .. MSH-6 from ``header``, MSH-7 its
    creation time, MSH-9 ``message_type``, MSH-10 the stable control ID, MSH-11, MSH-12 ``version``
    (else the header's), MSH-15 / MSH-16 empty (original acknowledgement mode), MSH-18 the
    version's character set (table 0211)."""
    version = version or header.version
    return "MSH|" + ENCODING_CHARACTERS + "|" + "|".join(
        [
            escape(header.sending_application),  # MSH-3
            escape(header.sending_facility),  # MSH-4
            escape(header.receiving_application),  # MSH-5
            escape(header.receiving_facility),  # MSH-6
            hl7_ts(header.created_at, tz),  # MSH-7
            "",  # MSH-8
            message_type,  # MSH-9
            escape(header.message_control_id),  # MSH-10
            escape(header.processing_id),  # MSH-11
            version,  # MSH-12
            "",  # MSH-13
            "",  # MSH-14
            "",  # MSH-15 accept ack type: empty = original mode
            "",  # MSH-16
            "",  # MSH-17
            charset(version),  # MSH-18
        ]
    )


def pid_segment(content) -> str:
    """PID (HL7 v2.5.1 3.4.2) of every message we send: PID-1 1, PID-3 every identifier (CX),
    PID-5 name (XPN), PID-7 birth date, PID-8 sex."""
    return _segment(
        "PID",
        {
            1: "1",
            3: "~".join(cx(i) for i in content.patient_identifiers if i.id_number),
            5: xpn(content.patient_name),
            7: hl7_ts(content.patient_birth_date),
            8: escape(content.patient_sex),
        },
    )


def pv1_segment(content) -> str:
    """PV1 (HL7 v2.5.1 3.4.3) of the order's visit: PV1-1 1, PV1-2 patient class (U when unknown),
    PV1-3 assigned location, PV1-8 referring doctor (XCN), PV1-19 visit number."""
    return _segment(
        "PV1",
        {
            1: "1",
            2: escape(content.patient_class) or "U",
            3: escape(content.assigned_location),
            8: xcn(content.referring_physician),
            19: escape(content.visit_number),
        },
    )


def render_segments(content: OruContent, header: MessageHeader, *, time_zone: str = "UTC",
                    pdf: bytes = b"") -> list[str]:
    """The segments of the ORU^R01, each a str without the terminating CR; ``pdf``, when given,
    is the report as a PDF (``hl7gateway.report_pdf``), carried in an OBX of value type ED."""
    if header.version not in VERSIONS:
        raise ValueError(f"unsupported ORU version {header.version!r}; use one of {VERSIONS}")
    if content.result_status not in RESULT_STATUSES:
        raise ValueError(f"result status must be one of {RESULT_STATUSES}, not {content.result_status!r}")
    if header.text_value_type not in TEXT_VALUE_TYPES:
        raise ValueError(f"OBX-2 for text must be one of {TEXT_VALUE_TYPES}")
    if not header.message_control_id:
        raise ValueError("MSH-10 (message control ID) is required")
    tz = zoneinfo.ZoneInfo(time_zone)
    v251 = header.version == "2.5.1"
    status = content.result_status
    # MSH-9: the message structure since v2.3.1, required in 2.5.
    segments = [msh_segment(header, "ORU^R01^ORU_R01" if v251 else "ORU^R01", tz), pid_segment(content),
                pv1_segment(content)]
    placer = ei(content.placer_order_number, content.placer_namespace)
    filler = ei(content.filler_order_number, content.filler_namespace)
    segments.append(
        _segment(
            "ORC",
            {
                1: "RE",
                2: placer,
                3: filler,
                5: "A" if status == "P" else "CM",  # HL7 table 0038: some results / completed
                12: xcn(content.ordering_provider),
            },
        )
    )
    segments.append(
        _segment(
            "OBR",
            {
                1: "1",
                2: placer,
                3: filler,
                4: _components(
                    content.procedure_code_value, content.procedure_code_meaning, content.procedure_code_scheme
                ),
                7: hl7_ts(content.observation_datetime, tz),
                16: xcn(content.ordering_provider),
                18: escape(content.accession_number),
                19: escape(content.requested_procedure_id),
                22: hl7_ts(content.signed_at, tz),
                24: "RAD",
                25: status,
                32: principal_result_interpreter(content.signer, content.signed_at, tz),
            },
        )
    )
    set_id = 0
    observer = xcn(content.signer)
    for line in content.text_lines:
        set_id += 1
        fields = {
            1: str(set_id),
            2: header.text_value_type,
            3: _components(*REPORT_OBSERVATION_ID),
            4: "1",
            5: escape(line),
            11: status,
            14: hl7_ts(content.observation_datetime, tz),
            16: observer,
        }
        if v251:
            fields[19] = hl7_ts(content.signed_at, tz)  # OBX-19 date/time of the analysis (v2.5+)
        segments.append(_segment("OBX", fields))
    if content.study_instance_uid:
        set_id += 1
        segments.append(
            _segment(
                "OBX",
                {
                    1: str(set_id),
                    2: "ST",  # HL7 table 0125 of v2.3.1 / v2.5.1 has no HD; a UID is a string
                    3: _components(*STUDY_OBSERVATION_ID),
                    4: "1",
                    5: escape(content.study_instance_uid),
                    11: status,
                },
            )
        )
    pointers = ((header.link_viewer, content.viewer_url, VIEWER_OBSERVATION_ID, VIEWER_POINTER_TYPE),
                (header.link_wado_rs, content.wado_rs_url, WADO_RS_OBSERVATION_ID, WADO_RS_POINTER_TYPE))
    for wanted, url, observation_id, (data_type, subtype) in pointers:
        if not (wanted and url):
            continue
        set_id += 1
        segments.append(_segment("OBX", {
            1: str(set_id),
            2: "RP",
            3: _components(*observation_id),
            4: "1",
            # RP (2A.65): pointer (ST) ^ application ID (HD) ^ type of data ^ subtype; the URL's
            # delimiters (& in a query string) are escaped like any other value (2.7.4).
            5: _components(url, header.sending_application, data_type, subtype),
            11: status,
        }))
    if pdf:
        set_id += 1
        # ED (2A.24): source application ^ type of data ^ subtype ^ encoding ^ data.  Base64
        # (RFC 4648, no line breaks) uses A-Z a-z 0-9 + / = only: no HL7 delimiter, no escape
        # sequence, no control character -- the data goes in as it is.
        data = base64.b64encode(pdf).decode("ascii")
        segments.append(_segment("OBX", {
            1: str(set_id),
            2: "ED",
            3: _components(*REPORT_OBSERVATION_ID),
            4: PDF_SUB_ID,
            5: "^".join([escape(header.sending_application), *PDF_DATA_TYPE, data]),
            11: status,
            14: hl7_ts(content.observation_datetime, tz),
            16: observer,
            **({19: hl7_ts(content.signed_at, tz)} if v251 else {}),
        }))
    return segments


def render_oru(content: OruContent, header: MessageHeader, *, time_zone: str = "UTC", pdf: bytes = b"") -> str:
    """The ORU^R01 as text: segments each terminated by CR (HL7 v2.5.1 2.5.5)."""
    return "\r".join(render_segments(content, header, time_zone=time_zone, pdf=pdf)) + "\r"


def encode(message: str) -> bytes:
    """The bytes that go on the wire: UTF-8, as MSH-18 declares."""
    return message.encode("utf-8")
