"""Field conversions shared by the ORM, OMI and ADT mappings (fields: docs/hl7-interface.md 1.4).

HL7 data types: TS/DTM (v2.5.1 section 2.A.22/2.A.85), XPN (2.A.88), XCN (2.A.89), CX (2.A.14).
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from django.conf import settings

from hl7gateway.parsing import HL7Error, ParsedMessage, Segment
from ris import states
from ris.commands import PatientData, PatientIdentity, VisitData

_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d{1,4})?([+-]\d{4})?$")


def parse_ts(value: str, location: str) -> datetime | None:
    """HL7 TS/DTM ``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`` -> aware datetime.

    Without an offset the time is read in the department's ``TIME_ZONE``.
    """
    value = value.strip()
    if not value:
        return None
    m = _TS.match(value)
    if not m:
        raise HL7Error(f"{value!r} is not an HL7 date/time", code=102, location=location)
    y, mo, d, h, mi, s, off = m.groups()
    try:
        if off:
            sign = 1 if off[0] == "+" else -1
            tz = timezone(sign * timedelta(hours=int(off[1:3]), minutes=int(off[3:5])))
        else:
            tz = ZoneInfo(settings.TIME_ZONE)
        return datetime(int(y), int(mo or 1), int(d or 1), int(h or 0), int(mi or 0), int(s or 0), tzinfo=tz)
    except ValueError:
        raise HL7Error(f"{value!r} is not a valid date/time", code=102, location=location) from None


def parse_date(value: str, location: str) -> date | None:
    value = value.strip()
    if not value:
        return None
    if not re.match(r"^\d{8}", value):
        raise HL7Error(f"{value!r} is not an HL7 date", code=102, location=location)
    try:
        return date(int(value[0:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        raise HL7Error(f"{value!r} is not a valid date", code=102, location=location) from None


def group_obr(group: list[Segment], obrs_before: int) -> Segment | None:
    """The OBR of an order group, if any.  An ORC is followed by one OBR (ORM^O01 ORDER_DETAIL,
    HL7 v2.3.1 4.2; OMI^O23 ORDER, v2.5.1 4.4.10); a second OBR before the next ORC is a segment
    sequence error (AE 100 at that OBR, ``obrs_before`` counting the OBRs of the groups before),
    never dropped: a cancel naming two procedures under one ORC would otherwise be acknowledged AA
    having cancelled only the first."""
    obrs = [s for s in group if s.id == "OBR"]
    if len(obrs) > 1:
        raise HL7Error(
            "more than one OBR after one ORC: each procedure needs its own ORC",
            code=100,
            location=f"OBR^{obrs_before + 2}",
        )
    return obrs[0] if obrs else None


def _pn(family: str, given: str, middle: str, prefix: str, suffix: str) -> str:
    return "^".join([family, given, middle, prefix, suffix]).rstrip("^")


def xpn_to_pn(comps: list[str]) -> str:
    """XPN family^given^middle^suffix^prefix -> DICOM PN family^given^middle^prefix^suffix."""
    c = (comps + [""] * 5)[:5]
    return _pn(c[0], c[1], c[2], c[4], c[3])


def xcn_to_pn(comps: list[str]) -> str:
    """XCN id^family^given^middle^suffix^prefix -> DICOM PN (the ID is dropped)."""
    c = (comps + [""] * 6)[:6]
    return _pn(c[1], c[2], c[3], c[5], c[4])


def sex(value: str) -> str:
    value = value.strip().upper()[:1]
    return value if value in {"M", "F", "O"} else ""


def priority(code: str) -> str:
    """HL7 table 0027 (ORC-7.6 / TQ1-9) -> RequestedProcedurePriority (0040,1003)."""
    return states.HL7_PRIORITY.get(code.strip().upper()[:1], states.PRIORITY_ROUTINE) if code.strip() else ""


def identities(seg: Segment, field: int, location: str) -> list[PatientIdentity]:
    ids = []
    for i in range(len(seg.repetitions(field))):
        c = seg.components(field, i) + [""] * 5
        if c[0].strip():
            ids.append(PatientIdentity(c[0].strip(), c[3].split("&")[0].strip(), c[4].strip()))
    if not ids:
        raise HL7Error(f"{location} patient identifier list has no ID", code=101, location=location)
    return ids


def patient_from_pid(msg: ParsedMessage) -> PatientData:
    pid = msg.segment("PID")
    if pid is None:
        raise HL7Error("PID segment missing", code=100, location="PID")
    return PatientData(
        identifiers=identities(pid, 3, "PID^1^3"),
        patient_name=xpn_to_pn(pid.components(5)),
        patient_birth_date=parse_date(pid.get(7), "PID^1^7"),
        patient_sex=sex(pid.get(8)),
    )


def visit_from_pv1(msg: ParsedMessage) -> VisitData | None:
    """PV1-19 visit number, else PID-18 account number: the value DICOM carries as AdmissionID
    (0038,0010) in the MWL (PS3.4 Table K.6-1)."""
    pv1 = msg.segment("PV1")
    pid = msg.segment("PID")
    number = (pv1.get(19) if pv1 else "") or (pid.get(18) if pid else "")
    if not number:
        return None
    return VisitData(
        visit_number=number[:64],
        patient_class=pv1.get(2)[:4] if pv1 else "",
        assigned_location="^".join(c for c in pv1.components(3)[:3] if c)[:120] if pv1 else "",
        referring_physician_name=xcn_to_pn(pv1.components(8)) if pv1 else "",
        admit_datetime=parse_ts(pv1.get(44), "PV1^1^44") if pv1 else None,
    )


def station_ae_for(modality: str) -> str:
    """The site rule for ORM (which has no IPC-9): ``HL7_STATION_AE_BY_MODALITY``.

    ``"CT=CT1,MR=MR1"``: a CT step is scheduled on station AE ``CT1``; other modalities get none.
    """
    rule = getattr(settings, "HL7_STATION_AE_BY_MODALITY", "") or ""
    for pair in rule.split(","):
        key, _, ae = pair.partition("=")
        if key.strip().upper() == modality.upper() and ae.strip():
            return ae.strip()[:16]
    return ""


def cause(msg: ParsedMessage, extra: str = "") -> str:
    text = f"HL7 {msg.msh.message_type} {extra} {msg.msh.msh_10}"
    return " ".join(text.split())[:255]
