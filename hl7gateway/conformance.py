"""Is an outbound message valid HL7 for its version?  The check a destination that validates
(``OutboundDestination.validate_messages``, ``validate=1``) runs before each send, and the tests
run on every kind of message the engine builds.

The message is parsed by hl7apy against the version in its MSH-12 and the message structure of
its MSH-9 (MSH-9.3, else the structure HL7 assigns to the message type and trigger event) with
``VALIDATION_LEVEL.STRICT`` (segments in their groups, data types, cardinality), then checked
by hl7apy's ``Validator``, whose findings are all kept: errors (structure, required and
repeated children, data types) and the findings hl7apy only reports -- a value longer than its
field allows, a value missing from the HL7 table bound to it.  Any one of them fails the message.

Two findings are hl7apy's own defects, not the message's, and are not counted:

* a *choice* group (HL7 v2.3.1 ORM^O01, ``ORDER DETAIL``: one of ``OBR``, ``RQD``, ``RQ1``,
  ``RXO``, ``ODS``, ``ODT``) is checked by hl7apy's ``Validator`` as if each alternative were
  required; here it must hold exactly one of them, and a missing alternative is reported only when
  none is present;
* table 0396 (coding system) admits local coding systems of the form ``99zzz`` (HL7 v2.5.1
  table 0396, "99zzz or L" for local), which hl7apy's table lists as the literal ``99zzz``; a
  value ``99`` followed by letters or digits is such a local system;
* hl7apy parses OBX-5 (data type "varies") as plain strings of at most 199 characters whatever
  OBX-2 says, so a report line longer than that, or any encapsulated PDF, would fail; but OBX-5
  takes the data type given in OBX-2 (HL7 v2.5.1 7.4.2.5).  Each OBX-5 is therefore checked
  here by hl7apy as its OBX-2 type (its components' types, lengths and tables), and the message
  as a whole with the OBX-5 values set aside.  In an ED (2A.24) the data component is checked
  against its encoding (Base64: RFC 4648 alphabet, decodable) and the field's length (65536
  characters in v2.3.1, 99999 in v2.5.1), not against ST's 199 of hl7apy's v2.3.1 ED-5;
* table 0291 (subtype of referenced data) lists a few subtypes and admits the IANA-registered
  MIME subtypes besides; hl7apy's table has only the list, so ``PDF`` (application/pdf) is
  accepted.

hl7apy's references carry no field lengths of the standard (MSH-10's 20, for one): lengths are
checked only as far as the data types go (ST 199, TX and FT 65536 ...).

Findings that quote a long value are shortened (the page shows them; the message itself is on the
message's page).

hl7apy is imported here, and this module is imported only where a message is validated: the
delivery of a destination that does not validate never loads it.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

#: hl7apy's error text for a required child that is missing: ``Missing required child GROUP.CHILD``.
_MISSING = re.compile(r"^Missing required child (?P<group>[A-Z0-9_]+)\.(?P<child>[A-Z0-9_]+)$")
_TABLE = re.compile(r"^Value (?P<value>.*) not in table (?P<table>HL7\d{4}) in element (?P<where>\S+)$")
_LOCAL_CODING_SYSTEM = re.compile(r"^99[A-Za-z0-9]+$")
#: Table 0291 values hl7apy does not list that the table admits (IANA-registered MIME subtypes).
_MIME_SUBTYPES = {"PDF"}
#: OBX-5's length per version (HL7 v2.3.1 / v2.5.1 segment OBX attribute table).
OBX_5_LENGTH = {"2.3.1": 65536, "2.5.1": 99999}
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
#: A finding is cut to this many characters (hl7apy quotes whole values).
_FINDING_LENGTH = 300


class InvalidMessage(ValueError):
    """The message is not valid HL7 for its version and structure; ``problems`` lists why."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def problems(payload: bytes | str) -> list[str]:
    """What makes the message invalid for its MSH-12 version and MSH-9 structure; [] when valid."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.exceptions import HL7apyException
    from hl7apy.parser import parse_message

    text = bytes(payload).decode("utf-8") if isinstance(payload, bytes | bytearray | memoryview) else payload
    segments = text.split("\r")
    msh = segments[0].split("|")
    version = msh[11] if len(msh) > 11 else ""
    found: list[str] = []
    for i, segment in enumerate(segments):
        fields = segment.split("|")
        if fields[0] == "OBX" and len(fields) > 5 and fields[5]:
            found += [f"OBX-{fields[1]} OBX-5: {p}" for p in _observation_value(version, fields[2], fields[5])]
            fields[5] = ""  # checked above as its OBX-2 type (module docstring)
            segments[i] = "|".join(fields)
    try:
        message = parse_message("\r".join(segments), validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    except HL7apyException as exc:  # not parseable as its structure: a wrong segment, a bad value
        found.append(f"{type(exc).__name__}: {exc}")
    except (ValueError, KeyError, IndexError) as exc:
        found.append(f"not parseable: {exc}")
    else:
        found += _findings(message)
    return [_shortened(f) for f in found]


def _shortened(finding: str) -> str:
    """A finding cut in the middle to ``_FINDING_LENGTH`` characters (the start says where, the end what)."""
    if len(finding) <= _FINDING_LENGTH:
        return finding
    half = (_FINDING_LENGTH - 3) // 2
    return finding[:half] + "..." + finding[-half:]


def _observation_value(version: str, value_type: str, value: str) -> list[str]:
    """OBX-5 checked by hl7apy as the data type OBX-2 names: component types and lengths, tables."""
    from hl7apy import load_reference
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.core import is_base_datatype
    from hl7apy.exceptions import HL7apyException
    from hl7apy.parser import parse_components

    found: list[str] = []
    if len(value) > OBX_5_LENGTH.get(version, 65536):
        found.append(f"{len(value)} characters, more than OBX-5 allows ({OBX_5_LENGTH.get(version, 65536)})")
    checked = value
    if value_type == "ED":
        parts = value.split("^")
        if len(parts) != 5:
            return [*found, f"ED has {len(parts)} components, not 5 (2A.24)"]
        if parts[3] == "Base64" and not (_BASE64.match(parts[4]) and len(parts[4]) % 4 == 0):
            found.append("ED-5 is not Base64 (RFC 4648) data")
        checked = "^".join(parts[:4])  # the data: by its encoding and the field's length, above
    try:
        components = parse_components(checked, value_type, version, None, VALIDATION_LEVEL.STRICT, None)
    except HL7apyException as exc:
        return [*found, f"{type(exc).__name__}: {exc}"]
    if is_base_datatype(value_type, version):
        return found
    tables = {name: ref[4] for name, ref, *_ in load_reference(value_type, "Datatypes_Structs", version)}
    for component in components:
        table = tables.get(component.name)
        given = component.to_er7()
        if not table or not given or given in _admitted(table):
            continue
        try:
            values = load_reference(table, "Table", version)[1]
        except HL7apyException:
            continue  # a table hl7apy has no values for
        if given not in values:
            found.append(f"Value {given} not in table {table} in element OBX_5.{component.name}")
    return found


def _admitted(table: str) -> set[str]:
    """Values a table admits that hl7apy's copy of it does not list (module docstring)."""
    return _MIME_SUBTYPES if table == "HL70291" else set()


def check(payload: bytes | str) -> None:
    """Raise ``InvalidMessage`` unless the message is valid (``problems`` is empty)."""
    found = problems(payload)
    if found:
        raise InvalidMessage(found)


def _findings(message) -> list[str]:
    """hl7apy's ``Validator`` errors and warnings, less its own defects (module docstring)."""
    from hl7apy.exceptions import HL7apyException
    from hl7apy.validation import Validator

    errors: list[str] = []
    # Validator.validate raises its first error only, and writes every finding -- the warnings
    # (lengths, tables) included -- only to a report file: read them from there.
    with tempfile.TemporaryDirectory(prefix="hl7-validation-") as folder:
        report = Path(folder) / "report.txt"
        try:
            Validator.validate(message, report_file=str(report))
        except HL7apyException:
            pass  # the first error; the report has all of them
        lines = [line for line in report.read_text(encoding="utf-8").splitlines() if line.strip()]
    choices = _choice_groups(message)
    for line in lines:
        kind, _, text = line.partition(": ")
        missing = _MISSING.match(text)
        if missing and missing["group"] in choices:
            present = choices[missing["group"]]
            if len(present) == 1:
                continue  # another alternative of the choice is there: hl7apy's defect
        table = _TABLE.match(text)
        if table and (table["value"] in _admitted(table["table"]) or (
                table["table"] == "HL70396" and _LOCAL_CODING_SYSTEM.match(table["value"]))):
            continue
        errors.append(text if kind in ("Error", "Warning") else line)
    for group, present in choices.items():
        if len(present) > 1:
            errors.append(f"Choice group {group} holds {len(present)} alternatives ({', '.join(present)}), not one")
    return errors


def _choice_groups(message) -> dict[str, list[str]]:
    """{choice group name: the alternatives present} for every choice group in the message."""
    from hl7apy import load_reference
    from hl7apy.exceptions import ChildNotFound

    found: dict[str, list[str]] = {}

    def walk(element) -> None:
        for child in element.children:
            if child.classname != "Group":
                continue
            try:
                ref = load_reference(child.name, "Group", child.version)
            except ChildNotFound:
                ref = None
            if ref is not None and ref[0] == "choice":
                found[child.name] = [c.name for c in child.children]
            walk(child)

    walk(message)
    return found
