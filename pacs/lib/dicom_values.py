"""DICOM value helpers: DA / TM / DT parsing and formatting, range values, PN and wildcards.

Value representations follow PS3.5 6.2; the matching forms (single value, wildcard,
range) follow PS3.4 C.2.2.2.  Everything here is a pure function of plain values.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo

__all__ = [
    "ValueError_",
    "format_da",
    "format_tm",
    "has_wildcard",
    "is_universal",
    "normalize_pn",
    "parse_da",
    "parse_dt",
    "parse_range",
    "parse_tm",
    "wildcard_to_like",
]


class ValueError_(ValueError):  # noqa: N801 - a ValueError for DICOM values, named apart from the builtin
    """A value that does not follow its VR's form (PS3.5 6.2)."""


_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_TM = re.compile(r"^(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?$")
_DT = re.compile(r"^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?)?)?)?([+-]\d{4})?$")


def parse_da(value: str) -> date:
    """DA: YYYYMMDD (PS3.5 6.2).  The ACR-NEMA form YYYY.MM.DD is accepted too."""
    text = value.strip().replace(".", "") if len(value.strip()) == 10 else value.strip()
    match = _DA.match(text)
    if not match:
        raise ValueError_(f"not a DA value: {value!r}")
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError as exc:
        raise ValueError_(f"not a DA value: {value!r} ({exc})") from None


def parse_tm(value: str, *, upper: bool = False) -> time:
    """TM: HH[MM[SS[.F{1,6}]]] (PS3.5 6.2); a colon form HH:MM:SS is accepted.

    A partial value names a span of time: as a lower bound it starts the span
    (``"10"`` -> 10:00:00), as an upper bound (``upper=True``) it ends it
    (``"10"`` -> 10:59:59.999999), so that ranges are inclusive at the given precision.
    """
    text = value.strip().replace(":", "")
    match = _TM.match(text)
    if not match:
        raise ValueError_(f"not a TM value: {value!r}")
    hh, mm, ss, frac = match.groups()
    try:
        if upper:
            micro = int(frac.ljust(6, "9")) if frac else 999999
            return time(int(hh), int(mm) if mm else 59, min(int(ss), 59) if ss else 59, micro)
        micro = int(frac.ljust(6, "0")) if frac else 0
        return time(int(hh), int(mm or 0), min(int(ss or 0), 59), micro)
    except ValueError as exc:
        raise ValueError_(f"not a TM value: {value!r} ({exc})") from None


def parse_dt(value: str, *, upper: bool = False, default_tz: tzinfo | None = None) -> datetime:
    """DT: YYYY[MM[DD[HH[MM[SS[.F]]]]]][&ZZXX] (PS3.5 6.2), as an aware datetime.

    Partial values are the start (or, with ``upper``, the end) of the span they name;
    without an offset the value is in ``default_tz`` (the department's zone).
    """
    match = _DT.match(value.strip())
    if not match:
        raise ValueError_(f"not a DT value: {value!r}")
    year, month, day, hh, mm, ss, frac, offset = match.groups()
    if offset:
        sign = -1 if offset[0] == "-" else 1
        tz: tzinfo = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
    else:
        tz = default_tz or UTC
    try:
        if not upper:
            return datetime(
                int(year), int(month or 1), int(day or 1), int(hh or 0), int(mm or 0), min(int(ss or 0), 59),
                int(frac.ljust(6, "0")) if frac else 0, tzinfo=tz,
            )
        # End of the named span: the start of the next span minus one microsecond.
        start = parse_dt(value, default_tz=default_tz)
        if month is None:
            nxt = start.replace(year=start.year + 1)
        elif day is None:
            nxt = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        elif hh is None:
            nxt = start + timedelta(days=1)
        elif mm is None:
            nxt = start + timedelta(hours=1)
        elif ss is None:
            nxt = start + timedelta(minutes=1)
        elif frac is None:
            nxt = start + timedelta(seconds=1)
        else:
            return start.replace(microsecond=int(frac.ljust(6, "9")))
        return nxt - timedelta(microseconds=1)
    except ValueError as exc:
        raise ValueError_(f"not a DT value: {value!r} ({exc})") from None


def parse_range(value: str, parse, **kwargs):
    """Range matching (PS3.4 C.2.2.2.5): ``A-B``, ``-B``, ``A-`` or a single value ``A``.

    Returns ``(lower, upper)``; an open end is None.  A single value is the span it
    names: ``(parse(v), parse(v, upper=True))`` for TM and DT, the same date for DA.
    A DT may carry a ``-ZZXX`` offset: a text that is one whole DT is a single value.
    """
    text = value.strip()
    upper_kw = {} if parse is parse_da else {"upper": True}
    if "-" not in text or (parse is parse_dt and _DT.match(text)):
        return parse(text, **kwargs), parse(text, **kwargs, **upper_kw)
    candidates = [i for i, char in enumerate(text) if char == "-"]
    if parse is not parse_dt and len(candidates) != 1:
        raise ValueError_(f"not a range: {value!r}")
    for i in candidates:
        lo, hi = text[:i].strip(), text[i + 1:].strip()
        if not lo and not hi:
            raise ValueError_(f"a range needs at least one end: {value!r}")
        if parse is parse_dt and not ((not lo or _DT.match(lo)) and (not hi or _DT.match(hi))):
            continue
        lower = parse(lo, **kwargs) if lo else None
        upper = parse(hi, **kwargs, **upper_kw) if hi else None
        return lower, upper
    raise ValueError_(f"not a range: {value!r}")


def format_da(value: date | None) -> str:
    return value.strftime("%Y%m%d") if value else ""


def format_tm(value: time | None) -> str:
    return value.strftime("%H%M%S") if value else ""


# --- Wildcards (PS3.4 C.2.2.2.4) ------------------------------------------------------------

def has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def is_universal(value: str) -> bool:
    """Universal matching (C.2.2.2.3): an empty value, or only ``*`` (C.2.2.2.4)."""
    stripped = value.strip()
    return stripped == "" or set(stripped) == {"*"}


def wildcard_to_like(value: str) -> str:
    """``*`` -> ``%`` and ``?`` -> ``_`` for SQL LIKE (escape character ``\\``);
    LIKE's own ``%``, ``_`` and ``\\`` in the value are escaped."""
    out = []
    for char in value:
        if char in "\\%_":
            out.append("\\" + char)
        elif char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        else:
            out.append(char)
    return "".join(out)


# --- PN (PS3.5 6.2.1) -----------------------------------------------------------------------

def normalize_pn(value: str) -> str:
    """A person name as stored and compared: trailing spaces and empty trailing
    components (``DOE^JOHN^^^`` -> ``DOE^JOHN``) dropped; only the alphabetic
    group (before the first ``=``) is kept."""
    alphabetic = value.split("=", 1)[0]
    return alphabetic.strip().rstrip("^").strip()
