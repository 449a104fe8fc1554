"""Original-mode acknowledgements (HL7 v2.5.1 section 2.9.2; docs/hl7-interface.md 1.6).

* MSH: sending and receiving application/facility swapped (our MSH-3/4 = their MSH-5/6, or
  ``HL7_RECEIVING_APPLICATION`` / ``HL7_RECEIVING_FACILITY`` when they left them empty),
  MSH-9 ``ACK^<trigger>^ACK``, MSH-10 a new control ID, MSH-11 and MSH-12 echoed.
* MSA-1 AA / AE / AR, MSA-2 the original MSH-10, MSA-3 a readable text on errors.
* ERR on AE/AR with the HL7 table 0357 code and the location:
  v2.5 and later ``ERR||<seg>^<seq>^<field>|<code>^<text>^HL70357|E||||<diagnostic>``;
  v2.3.1 and earlier ``ERR|<seg>^<seq>^<field>^<code>&<text>&HL70357``.
* Built from whatever MSH was read (``parsing.read_msh``): a message whose body cannot be
  parsed, or that has no MSH at all, still gets an AR.  When the received MSH-1/MSH-2 cannot
  delimit anything (``MSH.has_valid_separators``), the ACK uses the standard ``|^~\\&``
  (HL7 v2.5.1 section 2.5.4) and the values it echoes are escaped with them, so that the
  sender can always parse the answer.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from datetime import UTC, datetime

from django.conf import settings

from hl7gateway.parsing import CHARSETS, MSH

# HL7 table 0357 message error condition codes (the ones we send: docs/hl7-interface.md).
TABLE_0357 = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    200: "Unsupported message type",
    201: "Unsupported event code",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}

_DEFAULT_MSH = MSH()
_ECHOED = ("msh_3", "msh_4", "msh_5", "msh_6", "msh_9", "msh_10", "msh_11", "msh_12", "msh_18")


def new_control_id() -> str:
    """A fresh MSH-10 (at most 20 characters, the v2.3.1 length of ST)."""
    return "ACK" + uuid.uuid4().hex[:17]


def escape(text: str, msh: MSH) -> str:
    """HL7 escaping (v2.5.1 section 2.7.4) of free text with the sender's separators."""
    enc = msh.encoding_characters if len(msh.encoding_characters) >= 4 else "^~\\&"
    esc = enc[2]
    out = text.replace(esc, f"{esc}E{esc}")
    for ch, code in ((msh.field_separator, "F"), (enc[0], "S"), (enc[1], "R"), (enc[3], "T")):
        out = out.replace(ch, f"{esc}{code}{esc}")
    return out.replace("\r", " ").replace("\n", " ")


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (2, 5, 1)


def with_standard_separators(msh: MSH) -> MSH:
    """``msh`` re-expressed with ``|^~\\&``: the echoed values escaped, the trigger event kept
    only when it is a plain code (it was read with separators that cannot be trusted)."""
    trigger = msh.trigger_event if msh.trigger_event.isalnum() else ""
    echoed = {name: escape(getattr(msh, name), _DEFAULT_MSH) for name in _ECHOED}
    echoed["msh_9"] = f"{msh.message_code}^{trigger}" if trigger and msh.message_code.isalnum() else ""
    # Processing ID, version and character set only when they are what their tables allow.
    echoed["msh_11"] = msh.msh_11 if msh.msh_11.isalnum() else ""
    echoed["msh_12"] = msh.msh_12 if re.fullmatch(r"\d+(\.\d+)*", msh.msh_12) else ""
    echoed["msh_18"] = msh.msh_18 if msh.msh_18.upper() in CHARSETS else ""
    return dataclasses.replace(_DEFAULT_MSH, **echoed)


def build_ack(msh: MSH | None, ack_code: str, *, error_code: int | None = None, error_location: str = "",
              error_text: str = "", control_id: str | None = None, now: datetime | None = None) -> str:
    """The ACK message as text, segments ended by ``\\r``."""
    msh = msh or _DEFAULT_MSH
    if not msh.has_valid_separators:
        msh = with_standard_separators(msh)
    fs = msh.field_separator
    enc = msh.encoding_characters if len(msh.encoding_characters) >= 4 else "^~\\&"
    comp, sub = enc[0], enc[3]
    version = msh.version or "2.5.1"
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    trigger = msh.trigger_event
    msh_9 = f"ACK{comp}{trigger}{comp}ACK" if trigger else "ACK"
    fields = [
        "MSH", enc,
        msh.msh_5 or escape(settings.HL7_RECEIVING_APPLICATION, msh),
        msh.msh_6 or escape(settings.HL7_RECEIVING_FACILITY, msh),
        msh.msh_3, msh.msh_4, stamp, "", msh_9, control_id or new_control_id(),
        msh.msh_11 or "P", msh.msh_12 or version,
    ]
    if msh.msh_18:
        fields += ["", "", "", "", "", msh.msh_18]
    segments = [fs.join(fields)]
    msa = ["MSA", ack_code, msh.msh_10]
    if ack_code != "AA" and error_text:
        msa.append(escape(error_text, msh)[:80])
    segments.append(fs.join(msa))
    if ack_code != "AA" and error_code is not None:
        label = TABLE_0357.get(error_code, "")
        loc = [p for p in error_location.split("^")] if error_location else []
        loc_field = comp.join(loc)
        if _version_tuple(version) >= (2, 5):
            err = ["ERR", "", loc_field, f"{error_code}{comp}{label}{comp}HL70357", "E", "", "", "",
                   escape(error_text, msh)]
        else:
            loc3 = (loc + ["", "", ""])[:3]
            err = ["ERR", comp.join(loc3 + [f"{error_code}{sub}{label}{sub}HL70357"])]
        segments.append(fs.join(err))
    return "\r".join(segments) + "\r"


def encode_ack(text: str, msh: MSH | None) -> bytes:
    """Encode the ACK in the message's character set (the default when MSH-18 is empty/unknown)."""
    name = (msh.msh_18 if msh else "").split("~")[0].strip().upper() or settings.HL7_DEFAULT_CHARSET
    codec = CHARSETS.get(name) or CHARSETS.get(settings.HL7_DEFAULT_CHARSET) or "utf-8"
    return text.encode(codec, errors="replace")
