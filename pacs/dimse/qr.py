"""Query/Retrieve SCP (PS3.4 Annex C): Patient Root and Study Root FIND, MOVE and GET over the image index.

FIND (C.4.1), at the levels of the information model (Patient Root: PATIENT, STUDY, SERIES,
IMAGE; Study Root: STUDY, SERIES, IMAGE, its patient attributes being study-level keys), with
the baseline hierarchical search (C.4.1.2.2.1): the identifier holds the unique key of every
level above the query level (PatientID, StudyInstanceUID, SeriesInstanceUID) with one value,
and no key of a level below it; else 0xA900.  The identifier becomes a query of the image
index (``pacs.services.index_query``, the search QIDO-RS uses too: one SQL query, the matching
of C.2.2.2, the patient level grouping studies by patient ID and issuer): this module only
reads the identifier into it and its rows into answers.  Each match is one pending (0xFF00)
response with the keys asked for, the unique keys of the levels above and at the query level,
and SpecificCharacterSet as the worklist answers do (ISO_IR 192 when a value is not ASCII);
results beyond QR_MAX_RESULTS are cut with a warning in the log.
Keys the index does not hold are returned empty and matched universally.

MOVE (C.4.2) and GET (C.4.3): the identifier names studies, series or instances by their unique
keys (lists allowed at the retrieve level).  Each instance is a C-STORE sub-operation, sent
with its stored transfer syntax when the receiver accepted it, else converted by pydicom to
explicit or implicit VR little endian (decompressed if it can), else counted as failed.
C-MOVE sends to a declared DICOM node (``DicomNode``: its AE title, host and port) on a new
association; an unknown destination is 0xA801.  C-GET sends on the requesting association,
on the storage contexts where the requestor took the SCP role (PS3.7 D.3.3.4).  A pending
response with the remaining, completed, failed and warning counts follows every sub-operation;
the final status is 0x0000 (all completed), 0xB000 (some failed or had warnings), 0xA702 (all
failed) or 0xFE00 (C-CANCEL), with the Failed SOP Instance UID List when one failed.

A study purged here after archiving is fetched back from the VNA (``pacs.dimse.recall``): the
retrieval waits up to RECALL_WAIT_SECONDS for it; if nothing named is held by then it is refused
with 0xA702 and an ErrorComment asking to retry (0xC000 when no archive can be asked); else the
instances of the purged studies are failed sub-operations of an otherwise normal retrieval.

Statuses of refusals: 0xA900 identifier does not match SOP class, 0xA700 (FIND) / 0xA701
(MOVE, GET) database unavailable, 0xC000 unable to process (a bug: logged).  Every query and
every retrieval is on the audit trail (``pacs.auditing``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Q
from pydicom import config, dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom.dsutils import encode as encode_dataset
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacs import auditing, storage
from pacs.dimse import db, flat, requestor, ul
from pacs.dimse import recall as qr_recall
from pacs.dimse.acceptor import Aborted
from pacs.dimse.counting import counted
from pacs.dimse.matching import IdentifierError, _text_value
from pacs.dimse.status import (
    CANCELED,
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    PENDING,
    SUCCESS,
    UNABLE_TO_PROCESS,
)
from pacs.dimse.status import failure as _failure
from pacs.dimse.transfer_syntaxes import UNCOMPRESSED
from pacs.lib.dicom_values import (
    format_da,
    has_wildcard,
)
from pacs.models import DicomNode, Instance
from pacs.services import index_query as iq
from project.auditing import events
from project.peers import network

log = logging.getLogger("pacs.dimse.qr")

WARNING = 0xB000  # sub-operations complete, one or more failures or warnings (C.4.2.1.5)
OUT_OF_RESOURCES = 0xA700  # C-FIND (C.4.1.1.4)
OUT_OF_RESOURCES_MATCHES = 0xA701  # C-MOVE, C-GET: unable to calculate the number of matches
OUT_OF_RESOURCES_SUBOPERATIONS = 0xA702  # unable to perform sub-operations
MOVE_DESTINATION_UNKNOWN = 0xA801

PATIENT, STUDY, SERIES, IMAGE = iq.PATIENT, iq.STUDY, iq.SERIES, iq.IMAGE
DEPTH = iq.DEPTH
UNIQUE_KEY = iq.UNIQUE_KEY

# SOP class -> (information model root, top level).
FIND_MODELS = {
    str(PatientRootQueryRetrieveInformationModelFind): PATIENT,
    str(StudyRootQueryRetrieveInformationModelFind): STUDY,
}
RETRIEVE_MODELS = {
    str(PatientRootQueryRetrieveInformationModelMove): PATIENT,
    str(StudyRootQueryRetrieveInformationModelMove): STUDY,
    str(PatientRootQueryRetrieveInformationModelGet): PATIENT,
    str(StudyRootQueryRetrieveInformationModelGet): STUDY,
}


def contexts():
    return [(uid, UNCOMPRESSED) for uid in (*FIND_MODELS, *RETRIEVE_MODELS)]


# The scope of the image index query each unique key above the query level gives.
_SCOPE = {PATIENT: "patient_id", STUDY: "study_uid", SERIES: "series_uid"}


@dataclass
class Query:
    """A C-FIND identifier read: the image index query it asks (``search``), the model's top
    level, the keys to answer (keyword, tag, VR) in identifier order."""

    search: iq.Query
    top: str
    returned: list = field(default_factory=list)
    charset_requested: bool = False

    @property
    def level(self) -> str:
        return self.search.level


def _level_of(identifier: Dataset, top: str) -> str:
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in DEPTH or DEPTH[level] < DEPTH[top]:
        raise IdentifierError(f"QueryRetrieveLevel {level!r} is not a level of this information model")
    return level


def _single(identifier: Dataset, keyword: str) -> str:
    """The one value of a unique key above the query level (C.4.1.2.2.1: single value matching)."""
    values = [v.strip().rstrip("\x00") for v in _text_value(identifier.get(keyword), ui=True)]
    if len(values) != 1 or not values[0] or has_wildcard(values[0]):
        raise IdentifierError(f"{keyword} (a unique key above the query level) needs one value")
    return values[0]


def _key_value(elem: DataElement) -> str | list[str]:
    """A key's value as the index query takes it: a text, or the values of a multi-valued one."""
    try:
        value = elem.value
    except Exception as exc:  # noqa: BLE001 - undecodable value in the identifier
        raise IdentifierError(f"{elem.keyword} cannot be decoded: {exc}") from None
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value]
    return str(value)


def read_query(identifier: Dataset, top: str) -> Query:
    """The identifier of a C-FIND as a ``Query`` of the image index (PS3.4 C.4.1.2.2.1): the
    unique key of each level above with one value scopes it; the other keys are matched and
    returned; those the index does not hold are returned empty.  IdentifierError when the
    identifier breaks the model."""
    level = _level_of(identifier, top)
    levels = [lvl for lvl in iq.LEVELS if DEPTH[top] <= DEPTH[lvl] <= DEPTH[level]]
    search = iq.Query(level=level, defaults=False, include={UNIQUE_KEY[lvl] for lvl in levels},
                      limit=settings.QR_MAX_RESULTS)
    query = Query(search=search, top=top)
    unique_above = set()
    for above in levels[:-1]:
        unique_above.add(UNIQUE_KEY[above])
        setattr(search, _SCOPE[above], _single(identifier, UNIQUE_KEY[above]))
    for elem in identifier:
        keyword = elem.keyword
        if keyword == "SpecificCharacterSet":
            query.charset_requested = True
            continue
        if elem.tag.element == 0 or elem.tag.is_private or keyword in ("QueryRetrieveLevel", ""):
            continue
        query.returned.append((keyword, elem.tag, elem.VR))
        if elem.VR == "SQ" or keyword not in iq.ATTRIBUTES:
            continue  # not held (no sequence is): returned empty, matched universally
        if keyword in unique_above:
            search.include.add(keyword)
        else:
            search.keys[keyword] = _key_value(elem)
    return query


def find(identifier: Dataset, top: str, *, calling_ae_title: str) -> tuple[Query, list[dict]]:
    """``(query, rows)`` for a C-FIND identifier: one query of the image index, rows at most
    QR_MAX_RESULTS (a cut is logged).  Raises IdentifierError (0xA900) or a DatabaseError."""
    query = read_query(identifier, top)
    try:
        result = iq.search(query.search)
    except iq.QueryError as exc:
        raise IdentifierError(str(exc)) from None
    if result.more:
        log.warning("query/retrieve result cut at QR_MAX_RESULTS",
                    extra={"calling_ae_title": calling_ae_title, "level": query.level,
                           "limit": settings.QR_MAX_RESULTS})
    return query, result.rows


def _answer_value(keyword: str, query: Query, row: dict):
    if keyword == "QueryRetrieveLevel":
        return query.level
    if keyword == "RetrieveAETitle":
        return settings.DICOM_AE_TITLE
    raw = row.get(keyword)
    if raw is None or raw == "":
        return None
    if isinstance(raw, date):
        return format_da(raw)
    if keyword == "ModalitiesInStudy":
        return [m for m in str(raw).split("\\") if m]
    if isinstance(raw, int):
        return raw
    return str(raw)


def answer_elements(query: Query, row: dict) -> tuple[list[tuple[int, str, object]], str | None]:
    """One pending answer (C.4.1.1.3.2) as ``(elements, SpecificCharacterSet)``: the keys asked
    for, each filled from the index or empty, the unique keys of the levels down to the query
    level and QueryRetrieveLevel; ISO_IR 192 when a value is not ASCII, empty when the
    identifier asked for SpecificCharacterSet, else None (not sent)."""
    returned = list(query.returned)
    asked = {keyword for keyword, _tag, _vr in returned}
    for level in (PATIENT, STUDY, SERIES, IMAGE):
        if DEPTH[query.top] <= DEPTH[level] <= DEPTH[query.level] and UNIQUE_KEY[level] not in asked:
            returned.append(_UNIQUE_KEY_ELEMENT[level])
    returned.append(_LEVEL_ELEMENT)
    non_ascii = False
    elements = []
    for keyword, tag, vr in returned:
        value = None if vr == "SQ" else _answer_value(keyword, query, row)
        if isinstance(value, str) and not value.isascii():
            non_ascii = True
        elements.append((int(tag), vr, None if value in (None, "", []) else value))
    charset = "ISO_IR 192" if non_ascii else ("" if query.charset_requested else None)
    return elements, charset


def build_answer(query: Query, row: dict) -> Dataset:
    """The answer of :func:`answer_elements` as a pydicom data set."""
    elements, charset = answer_elements(query, row)
    ds = Dataset()
    for tag, vr, value in elements:
        if vr == "SQ":
            ds.add_new(tag, "SQ", [])
        else:
            ds[tag] = DataElement(tag, vr, value, validation_mode=config.IGNORE)
    if charset is not None:
        ds.SpecificCharacterSet = charset
    return ds


def encoded_answer(query: Query, row: dict, transfer_syntax: str) -> bytes | Dataset:
    """The answer ready to send in ``transfer_syntax``: bytes written by ``flat.encode`` for the
    little endian syntaxes, else the pydicom data set (encoded by the acceptor)."""
    elements, charset = answer_elements(query, row)
    if charset is not None:
        elements.append((_CHARSET_TAG, "CS", charset or None))
    encoded = flat.encode(elements, transfer_syntax, utf8=charset == "ISO_IR 192")
    return encoded if encoded is not None else build_answer(query, row)


_UNIQUE_KEY_ELEMENT = {level: (keyword, tag_for_keyword(keyword), dictionary_VR(keyword))
                       for level, keyword in UNIQUE_KEY.items()}
_LEVEL_ELEMENT = ("QueryRetrieveLevel", tag_for_keyword("QueryRetrieveLevel"), "CS")
_CHARSET_TAG = tag_for_keyword("SpecificCharacterSet")


def _patients(query: Query, rows: list[dict]) -> list[tuple[str, str]]:
    pairs: list = []
    for row in rows:
        pair = tuple(v or "" for v in row[iq.PATIENT_PAIR])
        if pair[0] and pair not in pairs:
            pairs.append(pair)
    return pairs


def _decoded(event):
    try:
        return event.identifier, None
    except Exception as exc:  # noqa: BLE001 - bytes that are no data set
        return None, str(exc)


def on_c_find(event):
    """C-FIND: yield (0xFF00, answer) per match, then (0x0000, None)."""
    calling = event.assoc.requestor.ae_title.strip()
    sop_class = event.context.abstract_syntax
    identifier, problem = _decoded(event)
    if identifier is None:
        log.warning("query/retrieve identifier cannot be decoded", extra={"calling_ae_title": calling,
                                                                         "reason": problem})
        yield _failure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "identifier cannot be decoded"), None
        return
    try:
        query, rows = db.run(find, identifier, FIND_MODELS[sop_class], calling_ae_title=calling)
    except IdentifierError as exc:
        log.warning("query/retrieve identifier refused", extra={"calling_ae_title": calling, "reason": str(exc)})
        _audit_query(event, identifier, [], 0, events.SERIOUS_FAILURE)
        yield _failure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc)), None
        return
    except DatabaseError as exc:
        log.error("query/retrieve query failed", extra={"calling_ae_title": calling, "error": str(exc)[:200]})
        _audit_query(event, identifier, [], 0, events.SERIOUS_FAILURE)
        yield _failure(OUT_OF_RESOURCES, "database unavailable"), None
        return
    except Exception:  # noqa: BLE001 - a bug must give a failure status, not a dropped association
        log.exception("query/retrieve query failed", extra={"calling_ae_title": calling})
        yield _failure(UNABLE_TO_PROCESS, "internal error"), None
        return
    log.info("query/retrieve query", extra={"calling_ae_title": calling, "level": query.level, "matches": len(rows)})
    for answered, row in enumerate(rows):
        if event.is_cancelled:
            _audit_query(event, identifier, _patients(query, rows[:answered]), answered, events.MINOR_FAILURE)
            yield CANCELED, None
            return
        try:
            answer = encoded_answer(query, row, event.context.transfer_syntax)
        except Exception:  # noqa: BLE001
            log.exception("query/retrieve answer could not be built", extra={"calling_ae_title": calling})
            yield _failure(UNABLE_TO_PROCESS, "internal error"), None
            return
        yield PENDING, answer
    if event.is_cancelled:
        _audit_query(event, identifier, _patients(query, rows), len(rows), events.MINOR_FAILURE)
        yield CANCELED, None
        return
    _audit_query(event, identifier, _patients(query, rows), len(rows), events.SUCCESS)
    yield SUCCESS, None


def _audit_query(event, identifier, patients, answers: int, outcome: int) -> None:
    try:
        auditing.query(event.assoc, identifier, patients, sop_class_uid=event.context.abstract_syntax,
                       answers=answers, outcome=outcome)
    except Exception:  # noqa: BLE001 - the answer stands; the failure to record is logged
        log.exception("query/retrieve query not recorded on the audit trail")


# --- retrieval ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToSend:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: str
    study_instance_uid: str
    patient: tuple[str, str]


def retrieve_filter(identifier: Dataset, top: str, *, purged: bool = False) -> Q:
    """The instances a C-MOVE / C-GET identifier names (C.4.2.2.1, baseline): the unique keys
    of the levels above the retrieve level with one value each, the retrieve level's with one
    or more (a list of UIDs); nothing else is matched.  Those of studies held here, or
    (``purged``) those of studies purged here after archiving."""
    level = _level_of(identifier, top)
    condition = Q(study__purged_at__isnull=not purged)
    paths = {PATIENT: "study__patient_id", STUDY: "study__study_instance_uid",
             SERIES: "series__series_instance_uid", IMAGE: "sop_instance_uid"}
    for each in (PATIENT, STUDY, SERIES, IMAGE):
        if not DEPTH[top] <= DEPTH[each] <= DEPTH[level]:
            continue
        keyword = UNIQUE_KEY[each]
        if each != level:
            condition &= Q(**{paths[each]: _single(identifier, keyword)})
            continue
        values = [v.strip().rstrip("\x00") for v in _text_value(identifier.get(keyword), ui=True) if v.strip()]
        if not values or any(has_wildcard(v) for v in values):
            raise IdentifierError(f"{keyword}: one or more values, without wildcards, name what to retrieve")
        condition &= Q(**{f"{paths[each]}__in": values})
    return condition


def plan_retrieval(identifier: Dataset, top: str, *, purged: bool = False) -> list[ToSend]:
    """The instances to send, in study, series and instance order (``purged``: those named whose
    study was purged here after archiving)."""
    rows = (Instance.objects.filter(retrieve_filter(identifier, top, purged=purged))
            .order_by("study_id", "series__series_number", "series_id", "instance_number", "pk")
            .values_list("sop_class_uid", "sop_instance_uid", "transfer_syntax_uid", "path",
                         "study__study_instance_uid", "study__patient_id", "study__issuer_of_patient_id"))
    return [ToSend(r[0], r[1], r[2], r[3], r[4], (r[5], r[6])) for r in rows]


def move_destination(ae_title: str) -> DicomNode | None:
    """The enabled DICOM node a C-MOVE may send to: its AE title, a port and one host (an
    address or a host name, not a network)."""
    node = DicomNode.objects.filter(ae_title=ae_title, enabled=True).first()
    if node is None or not node.port or not node.host:
        return None
    net = network(node.host)
    if net is not None and net.num_addresses != 1:
        return None
    return node


def _converted(path: str, syntax: str) -> bytes:
    """A stored instance re-encoded in ``syntax`` (little endian, uncompressed), decompressed
    by pydicom when it is compressed; raises when pydicom cannot."""
    ds = dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    payload = encode_dataset(ds, syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian,
                             syntax == DeflatedExplicitVRLittleEndian)
    if payload is None:
        raise ValueError(f"cannot be encoded in {syntax}")
    return payload


def _outcome(status: int) -> str:
    """A C-STORE-RSP status as a sub-operation's outcome (PS3.4 B.2.3)."""
    if status == SUCCESS:
        return "completed"
    if status & 0xF000 == 0xB000:
        return "warning"
    return "failed"


class _Tally:
    def __init__(self, total: int):
        self.remaining = total
        self.completed = self.failed = self.warning = 0
        self.failed_uids: list[str] = []
        self.sent: dict[str, list] = {}  # Study Instance UID -> [patient pair, instances sent]

    def add(self, item: ToSend, outcome: str) -> None:
        self.remaining -= 1
        if outcome == "failed":
            self.failed += 1
            self.failed_uids.append(item.sop_instance_uid)
            return
        if outcome == "warning":
            self.warning += 1
        else:
            self.completed += 1
        entry = self.sent.setdefault(item.study_instance_uid, [item.patient, 0])
        entry[1] += 1

    def status(self, code: int, *, remaining: bool) -> Dataset:
        ds = Dataset()
        ds.Status = code
        if remaining:
            ds.NumberOfRemainingSuboperations = min(self.remaining, 0xFFFF)
        ds.NumberOfCompletedSuboperations = min(self.completed, 0xFFFF)
        ds.NumberOfFailedSuboperations = min(self.failed, 0xFFFF)
        ds.NumberOfWarningSuboperations = min(self.warning, 0xFFFF)
        return ds

    def failed_list(self) -> Dataset | None:
        if not self.failed_uids:
            return None
        ds = Dataset()
        ds.FailedSOPInstanceUIDList = self.failed_uids
        return ds

    def final(self):
        if self.failed and not (self.completed or self.warning):
            code = OUT_OF_RESOURCES_SUBOPERATIONS
        elif self.failed or self.warning:
            code = WARNING
        else:
            code = SUCCESS
        return self.status(code, remaining=False), self.failed_list()


def _tally(items: list[ToSend], missing: list[ToSend]) -> _Tally:
    """The count of sub-operations: one per instance named; those of a purged study not fetched
    back in time are failed before the others are sent (C.4.2.1.5: 0xB000 with the Failed SOP
    Instance UID List)."""
    tally = _Tally(len(items) + len(missing))
    for item in missing:
        tally.add(item, "failed")
    return tally


def _plan(event, calling: str, operation: str):
    """The decoded identifier and the instances it names, or the refusal to yield."""
    identifier, problem = _decoded(event)
    if identifier is None:
        log.warning(f"{operation} identifier cannot be decoded", extra={"calling_ae_title": calling,
                                                                        "reason": problem})
        return None, None, (_failure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "identifier cannot be decoded"), None)
    try:
        items = db.run(plan_retrieval, identifier, RETRIEVE_MODELS[event.context.abstract_syntax])
    except IdentifierError as exc:
        log.warning(f"{operation} identifier refused", extra={"calling_ae_title": calling, "reason": str(exc)})
        return identifier, None, (_failure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc)), None)
    except DatabaseError as exc:
        log.error(f"{operation} failed", extra={"calling_ae_title": calling, "error": str(exc)[:200]})
        return identifier, None, (_failure(OUT_OF_RESOURCES_MATCHES, "database unavailable"), None)
    return identifier, items, None


def _with_purged(event, identifier, items: list[ToSend], operation: str):
    """The items to send, those of purged studies that could not be fetched back in time (each a
    failed sub-operation), or the refusal to yield when nothing named is held here
    (``pacs.dimse.recall``)."""
    top = RETRIEVE_MODELS[event.context.abstract_syntax]
    try:
        return qr_recall.recall_purged(event.assoc, identifier, items, operation,
                                       plan=lambda purged: plan_retrieval(identifier, top, purged=purged))
    except DatabaseError as exc:
        log.error(f"{operation} failed", extra={"error": str(exc)[:200]})
        return items, [], (_failure(OUT_OF_RESOURCES_MATCHES, "database unavailable"), None)


def _sub_operations(event, items: list[ToSend], send, tally: _Tally):
    """Send each item (``send(item) -> outcome``), a pending response after each; C-CANCEL stops."""
    for item in items:
        if event.is_cancelled:
            yield tally.status(CANCELED, remaining=True), tally.failed_list()
            return
        tally.add(item, send(item))
        if tally.remaining:
            yield tally.status(PENDING, remaining=True), None
    yield tally.final()


def on_c_move(event):
    """C-MOVE (C.4.2): the instances named, to the declared node ``MoveDestination`` on a new association."""
    calling = event.assoc.requestor.ae_title.strip()
    destination_title = (event.request.MoveDestination or "").strip()
    identifier, items, refusal = _plan(event, calling, "C-MOVE")
    if refusal is None:
        items, missing, refusal = _with_purged(event, identifier, items, "C-MOVE")
    if refusal is not None:
        _audit_retrieval(event, identifier, None, destination_title, events.SERIOUS_FAILURE)
        yield refusal
        return
    try:
        destination = db.run(move_destination, destination_title)
    except DatabaseError as exc:
        log.error("C-MOVE failed", extra={"calling_ae_title": calling, "error": str(exc)[:200]})
        _audit_retrieval(event, identifier, None, destination_title, events.SERIOUS_FAILURE)
        yield _failure(OUT_OF_RESOURCES_MATCHES, "database unavailable"), None
        return
    if destination is None:
        log.warning("C-MOVE refused: unknown move destination",
                    extra={"calling_ae_title": calling, "move_destination": destination_title})
        _audit_retrieval(event, identifier, None, destination_title, events.SERIOUS_FAILURE)
        yield _failure(MOVE_DESTINATION_UNKNOWN, "move destination unknown"), None
        return
    tally = _tally(items, missing)
    if not items:
        _audit_retrieval(event, identifier, tally, destination_title, events.SUCCESS)
        yield tally.final()
        return
    pairs = []
    for item in items:
        for syntax in (item.transfer_syntax_uid, ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if (item.sop_class_uid, syntax) not in pairs:
                pairs.append((item.sop_class_uid, syntax))
    try:
        association = requestor.Association.request(
            destination.host, destination.port, calling_ae_title=settings.DICOM_AE_TITLE,
            called_ae_title=destination.ae_title, contexts=pairs[:128], acse_timeout=settings.DICOM_ACSE_TIMEOUT,
            dimse_timeout=settings.DICOM_DIMSE_TIMEOUT, network_timeout=settings.DICOM_NETWORK_TIMEOUT)
    except (requestor.AssociationRejected, requestor.AssociationLost) as exc:
        log.warning("C-MOVE destination not reached", extra={"calling_ae_title": calling,
                                                              "move_destination": destination_title,
                                                              "error": str(exc)[:200]})
        for item in items:
            tally.add(item, "failed")
        _audit_retrieval(event, identifier, tally, destination_title, events.SERIOUS_FAILURE)
        yield tally.final()
        return
    originator = (calling, event.request.MessageID)

    def send(item: ToSend) -> str:
        if not association.is_established:
            return "failed"
        context_id = association.accepted.get((item.sop_class_uid, item.transfer_syntax_uid))
        data = storage.absolute_path(item.path)
        try:
            if context_id is None:
                for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
                    context_id = association.accepted.get((item.sop_class_uid, syntax))
                    if context_id is not None:
                        data = _converted(str(data), syntax)
                        break
                else:
                    return "failed"
            status = association.send_c_store(data, sop_class_uid=item.sop_class_uid,
                                              sop_instance_uid=item.sop_instance_uid, context_id=context_id,
                                              move_originator=originator)
        except requestor.AssociationLost as exc:
            log.warning("C-MOVE destination lost", extra={"move_destination": destination_title,
                                                           "error": str(exc)[:200]})
            return "failed"
        except Exception as exc:  # noqa: BLE001 - a file that cannot be read or converted: that one fails
            log.warning("C-MOVE sub-operation failed", extra={"move_destination": destination_title,
                                                               "error": str(exc)[:200]})
            return "failed"
        return _outcome(status)

    try:
        yield from _finish(event, identifier, items, send, tally, destination_title,
                           lambda: association.release() if association.is_established else None)
    finally:
        association.sock.close()


def _finish(event, identifier, items, send, tally: _Tally, destination: str, before_final=None):
    """The sub-operations' responses; before the final one the destination's association is
    released (C-MOVE) and the retrieval goes on the audit trail."""
    for answer in _sub_operations(event, items, send, tally):
        status = int(answer[0].Status)
        if status == PENDING:
            yield answer
            continue
        if before_final is not None:
            before_final()
        outcome = events.SUCCESS if status == SUCCESS else (
            events.MINOR_FAILURE if status in (WARNING, CANCELED) else events.SERIOUS_FAILURE)
        _audit_retrieval(event, identifier, tally, destination, outcome)
        yield answer


def on_c_get(event):
    """C-GET (C.4.3): the instances named, as C-STORE sub-operations on this association."""
    assoc = event.assoc
    calling = assoc.requestor.ae_title.strip()
    identifier, items, refusal = _plan(event, calling, "C-GET")
    if refusal is None:
        items, missing, refusal = _with_purged(event, identifier, items, "C-GET")
    if refusal is not None:
        _audit_retrieval(event, identifier, None, calling, events.SERIOUS_FAILURE)
        yield refusal
        return
    tally = _tally(items, missing)

    def send(item: ToSend) -> str:
        contexts = assoc.storage_contexts(item.sop_class_uid)
        path = storage.absolute_path(item.path)
        try:
            exact = [cx for cx in contexts if cx.transfer_syntax == item.transfer_syntax_uid]
            if exact:
                with open(path, "rb") as fh:
                    offset = storage.data_set_offset(fh)
                status = assoc.send_c_store(exact[0], path, sop_class_uid=item.sop_class_uid,
                                            sop_instance_uid=item.sop_instance_uid, data_set_offset=offset)
                return _outcome(status)
            for cx in contexts:
                if cx.transfer_syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
                    status = assoc.send_c_store(cx, _converted(str(path), cx.transfer_syntax),
                                                sop_class_uid=item.sop_class_uid,
                                                sop_instance_uid=item.sop_instance_uid)
                    return _outcome(status)
        except (ConnectionError, TimeoutError, Aborted, ul.ProtocolError):
            raise  # the association itself failed: the C-GET ends there (0xC000, or nothing after an abort)
        except Exception as exc:  # noqa: BLE001 - a file that cannot be read or re-encoded: that one fails
            log.warning("C-GET sub-operation failed", extra={"calling_ae_title": calling, "error": str(exc)[:200]})
        return "failed"

    yield from _finish(event, identifier, items, send, tally, calling)


def _audit_retrieval(event, identifier, tally: _Tally | None, destination: str, outcome: int) -> None:
    try:
        auditing.instances_retrieved(
            event.assoc, identifier, {} if tally is None else tally.sent, sop_class_uid=event.context.abstract_syntax,
            destination=destination, failed=0 if tally is None else tally.failed, outcome=outcome)
    except Exception:  # noqa: BLE001 - the retrieval stands; the failure to record is logged
        log.exception("retrieval not recorded on the audit trail")


def handlers():
    # Each answer counted per calling AE and status (pacs.dimse.counting).
    return {"C-FIND": counted("Q/R C-FIND", on_c_find), "C-MOVE": counted("C-MOVE", on_c_move),
            "C-GET": counted("C-GET", on_c_get)}
