"""Modality Worklist Information Model - FIND (1.2.840.10008.5.1.4.31), PS3.4 Annex K.

The handler reads the identifier into matching conditions (``pacs.dimse.matching``),
runs the one database query, and yields one Pending (0xFF00) response per item with
exactly the keys the query asked for (plus SpecificCharacterSet), then Success.  Items are
encoded straight from the rows (``ItemEncoder``) where the transfer syntax allows.

Statuses: 0xFF00 pending, 0x0000 success, 0xFE00 canceled (C-CANCEL), 0xA900 identifier
does not match SOP class, 0xC000 unable to process (database error or a bug: logged).
Results beyond MWL_MAX_RESULTS are cut with a warning in the log.
"""

from __future__ import annotations

import logging
import struct
from datetime import datetime

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone
from pydicom import config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.sop_class import ModalityWorklistInformationFind

from pacs import auditing
from pacs.dimse import db, policy
from pacs.dimse.counting import counted
from pacs.dimse.matching import (
    ISSUER_OF_PATIENT_ID,
    PATIENT_ID,
    TOP_KEYS,
    IdentifierError,
    Key,
    SequenceKey,
    build_queryset,
    read_identifier,
)
from pacs.dimse.status import (
    CANCELED,
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    PENDING,
    SUCCESS,
    UNABLE_TO_PROCESS,
)
from pacs.dimse.status import failure as _failure
from pacs.dimse.transfer_syntaxes import UNCOMPRESSED
from pacs.lib.dicom_values import format_da, format_tm
from pacs.signals import worklist_items_returned
from project.auditing import events

log = logging.getLogger("pacs.dimse.mwl")



def contexts():
    return [(ModalityWorklistInformationFind, UNCOMPRESSED)]


def _text(value) -> str:
    if value is None:
        return ""
    return str(value)


def _value(keyword: str, spec: Key, row: dict, local_start: datetime | None):
    if spec.path is None:
        return None
    if spec.kind == "sps_date":
        return format_da(local_start.date()) if local_start else ""
    if spec.kind == "sps_time":
        return format_tm(local_start.time()) if local_start else ""
    raw = row.get(spec.path)
    if spec.kind == "da":
        return format_da(raw)
    if spec.kind == "int":
        return raw  # US: None -> empty
    if spec.kind == "decimal":
        return "" if raw is None else format(raw.normalize(), "f")
    return _text(raw)


def _fill(target: Dataset, returned: list, table: dict, row: dict, local_start) -> bool:
    """Set each requested key from ``row``; True if any value is not ASCII."""
    non_ascii = False
    for keyword, tag, vr, sub in returned:
        spec = table.get(keyword)
        if vr == "SQ":
            items = Sequence()
            if isinstance(spec, SequenceKey) and not spec.empty and sub is not None:
                if spec.present is None or row.get(spec.present):
                    item = Dataset()
                    non_ascii |= _fill(item, sub, spec.keys, row, local_start)
                    items.append(item)
            target.add_new(tag, "SQ", items)
            continue
        value = _value(keyword, spec, row, local_start) if isinstance(spec, Key) else None
        if isinstance(value, str) and not value.isascii():
            non_ascii = True
        # Values come from our own columns: pydicom's per-value validation is skipped (it is a
        # third of the cost of building an item).
        target[tag] = DataElement(tag, vr, None if value in (None, "") else value, validation_mode=config.IGNORE)
    return non_ascii


def build_item(matches, row: dict) -> Dataset:
    """One MWL answer: the requested keys, each filled or empty (PS3.4 K.6.1.2.2)."""
    start = row.get("scheduled_start")
    local_start = timezone.localtime(start) if start else None
    ds = Dataset()
    non_ascii = _fill(ds, matches.returned, TOP_KEYS, row, local_start)
    if non_ascii:
        ds.SpecificCharacterSet = "ISO_IR 192"
    elif matches.charset_requested:
        ds.SpecificCharacterSet = ""
    return ds


# --- answers encoded straight from the row (PS3.5 7.1) -------------------------------------------
_LONG_LENGTH_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
_BINARY_VRS = {"US": struct.Struct("<H"), "SS": struct.Struct("<h"), "UL": struct.Struct("<L"),
               "SL": struct.Struct("<l")}
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
                       "UR", "UT"})
_IMPLICIT = struct.Struct("<HHL")
_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_EXPLICIT_LONG = struct.Struct("<HH2s2xL")
_CHARSET_TAG = 0x00080005


class ItemEncoder:
    """The MWL answers of one query, encoded directly from the database rows in implicit or
    explicit VR little endian: the same elements, values and character set as ``build_item``
    (a test compares the two), without building a pydicom Dataset per match and writing it
    (pydicom's writer was about half of the engine's CPU per 20-match query).

    ``for_query(matches, transfer_syntax)`` returns None where this encoder does not apply
    (big endian or deflated transfer syntax, or a returned key of a VR it does not write);
    the handler then answers with ``build_item``.  Sequences get defined lengths; each
    level is written in ascending tag order (PS3.5 7.1.1)."""

    def __init__(self, plan: list, explicit: bool, charset_requested: bool):
        self.plan = plan
        self.explicit = explicit
        self.charset_requested = charset_requested

    @classmethod
    def for_query(cls, matches, transfer_syntax: str) -> ItemEncoder | None:
        if transfer_syntax not in (ImplicitVRLittleEndian, ExplicitVRLittleEndian):
            return None
        try:
            plan = cls._compile(matches.returned, TOP_KEYS)
        except LookupError:
            return None
        return cls(plan, transfer_syntax == ExplicitVRLittleEndian, matches.charset_requested)

    @classmethod
    def _compile(cls, returned: list, table: dict) -> list:
        plan = []
        for keyword, tag, vr, sub in sorted(returned, key=lambda r: int(r[1])):
            spec = table.get(keyword)
            if vr == "SQ":
                nested = None
                if isinstance(spec, SequenceKey) and not spec.empty and sub is not None:
                    nested = (spec.present, cls._compile(sub, spec.keys))
                plan.append((int(tag), "SQ", keyword, None, nested))
                continue
            if vr not in _TEXT_VRS and vr not in _BINARY_VRS:
                raise LookupError(vr)
            plan.append((int(tag), vr, keyword, spec if isinstance(spec, Key) else None, None))
        return plan

    def _element(self, tag: int, vr: str, raw: bytes) -> bytes:
        if not self.explicit:
            return _IMPLICIT.pack(tag >> 16, tag & 0xFFFF, len(raw)) + raw
        if vr in _LONG_LENGTH_VRS:
            return _EXPLICIT_LONG.pack(tag >> 16, tag & 0xFFFF, vr.encode(), len(raw)) + raw
        return _EXPLICIT_SHORT.pack(tag >> 16, tag & 0xFFFF, vr.encode(), len(raw)) + raw

    def _level(self, plan: list, row: dict, local_start, out: list) -> bool:
        non_ascii = False
        for tag, vr, keyword, spec, nested in plan:
            if vr == "SQ":
                items = b""
                if nested is not None:
                    present, subplan = nested
                    if present is None or row.get(present):
                        content: list = []
                        non_ascii |= self._level(subplan, row, local_start, content)
                        body = b"".join(content)
                        items = _IMPLICIT.pack(0xFFFE, 0xE000, len(body)) + body
                out.append(self._element(tag, "SQ", items))
                continue
            value = _value(keyword, spec, row, local_start) if spec is not None else None
            if value is None or value == "":
                raw = b""
            elif vr in _BINARY_VRS:
                raw = _BINARY_VRS[vr].pack(int(value))
            else:
                text = value if isinstance(value, str) else str(value)
                raw = text.encode("utf-8")
                if len(raw) != len(text):
                    non_ascii = True
                if len(raw) % 2:
                    raw += b"\x00" if vr == "UI" else b" "
            out.append(self._element(tag, vr, raw))
        return non_ascii

    def encode(self, row: dict) -> bytes:
        start = row.get("scheduled_start")
        local_start = timezone.localtime(start) if start else None
        out: list = []
        non_ascii = self._level(self.plan, row, local_start, out)
        if non_ascii:
            out.insert(0, self._element(_CHARSET_TAG, "CS", b"ISO_IR 192"))
        elif self.charset_requested:
            out.insert(0, self._element(_CHARSET_TAG, "CS", b""))
        return b"".join(out)


def find(identifier: Dataset, *, calling_ae_title: str, node=None):
    """Run the one query for ``identifier``: ``(matches, rows)``, rows earliest first and at most
    MWL_MAX_RESULTS (a cut is logged).  Raises IdentifierError (0xA900) or a DatabaseError."""
    matches = read_identifier(identifier)
    station = None
    if settings.MWL_FILTER_BY_CALLING_AE:
        station = (node.station_ae_title if node and node.station_ae_title else calling_ae_title).strip()
    matches.paths.add("scheduled_start")
    if settings.AUDIT_ENABLED:  # the audit record names the patients answered (PS3.15 A.5.3.10)
        matches.paths.update((PATIENT_ID, ISSUER_OF_PATIENT_ID))
    limit = settings.MWL_MAX_RESULTS
    rows = list(build_queryset(matches, station_ae_title=station)[: limit + 1])
    if len(rows) > limit:
        log.warning(
            "mwl result cut at MWL_MAX_RESULTS",
            extra={"calling_ae_title": calling_ae_title, "limit": limit},
        )
        rows = rows[:limit]
    return matches, rows


def on_c_find(event):
    """C-FIND: yield (0xFF00, item) per match, then (0x0000, None)."""
    calling = event.assoc.requestor.ae_title.strip()
    try:
        identifier = event.identifier
    except Exception as exc:  # noqa: BLE001 - bytes that are no dataset
        log.warning("mwl identifier cannot be decoded", extra={"calling_ae_title": calling, "reason": str(exc)})
        yield _failure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "identifier cannot be decoded"), None
        return
    try:
        matches, rows = db.run(find, identifier, calling_ae_title=calling, node=policy.node_of(event.assoc))
    except IdentifierError as exc:
        log.warning("mwl identifier refused", extra={"calling_ae_title": calling, "reason": str(exc)})
        _audit(event, identifier, [], events.SERIOUS_FAILURE)
        yield _failure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc)), None
        return
    except DatabaseError as exc:
        log.error("mwl query failed", extra={"calling_ae_title": calling, "error": str(exc)})
        _audit(event, identifier, [], events.SERIOUS_FAILURE)
        yield _failure(UNABLE_TO_PROCESS, "database unavailable"), None
        return
    except Exception:  # noqa: BLE001 - a bug must give a failure status, not a dropped association
        log.exception("mwl query failed", extra={"calling_ae_title": calling})
        yield _failure(UNABLE_TO_PROCESS, "internal error"), None
        return
    log.info("mwl query", extra={"calling_ae_title": calling, "matches": len(rows)})
    if rows:  # which step went to which modality (the accession journey); never delays the answer
        worklist_items_returned.send(sender=None, scheduled_step_ids=[row["pk"] for row in rows],
                                     calling_ae_title=calling)
    encoder = ItemEncoder.for_query(matches, event.context.transfer_syntax)
    for answered, row in enumerate(rows):
        if event.is_cancelled:
            _audit(event, identifier, rows[:answered], events.MINOR_FAILURE)
            yield CANCELED, None
            return
        try:
            item = encoder.encode(row) if encoder is not None else build_item(matches, row)
        except Exception:  # noqa: BLE001
            log.exception("mwl answer could not be built", extra={"calling_ae_title": calling})
            yield _failure(UNABLE_TO_PROCESS, "internal error"), None
            return
        yield PENDING, item
    if event.is_cancelled:
        _audit(event, identifier, rows, events.MINOR_FAILURE)
        yield CANCELED, None
        return
    _audit(event, identifier, rows, events.SUCCESS)
    yield SUCCESS, None


def _audit(event, identifier: Dataset, rows: list, outcome: int) -> None:
    """The query on the audit trail (PS3.15 A.5.3.10), after the last answer was sent: handed
    to the audit writer thread, never delaying the final status; a failure is logged, never
    answered (the query itself succeeded)."""
    try:
        auditing.mwl_query(event.assoc, identifier, rows, patient_id_path=PATIENT_ID,
                           issuer_path=ISSUER_OF_PATIENT_ID, outcome=outcome)
    except Exception:  # noqa: BLE001
        log.exception("mwl query not recorded on the audit trail")


def handlers():
    # Each answer counted per calling AE and status (pacs.dimse.counting).
    return {"C-FIND": counted("MWL C-FIND", on_c_find)}

