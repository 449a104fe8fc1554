"""Query/Retrieve SCP (PS3.4 Annex C): Patient Root and Study Root FIND, MOVE and GET over the image index.

FIND (C.4.1), at the levels of the information model (Patient Root: PATIENT, STUDY, SERIES,
IMAGE; Study Root: STUDY, SERIES, IMAGE, its patient attributes being study-level keys), with
the baseline hierarchical search (C.4.1.2.2.1): the identifier holds the unique key of every
level above the query level (PatientID, StudyInstanceUID, SeriesInstanceUID) with one value,
and no key of a level below it; else 0xA900.  The identifier becomes one SQL query over
``pacs.models.Study`` / ``Series`` / ``Instance`` (the patient level groups studies by patient
ID and issuer), with the matching of C.2.2.2 (``pacs.dimse.matching``): single value, universal
(empty or ``*``), wildcards ``*`` and ``?``, ranges on dates and times, lists of UIDs.  Each
match is one pending (0xFF00) response with the keys asked for, the unique keys of the levels
above and at the query level, and SpecificCharacterSet as the worklist answers do (ISO_IR 192
when a value is not ASCII); results beyond QR_MAX_RESULTS are cut with a warning in the log.
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

Statuses of refusals: 0xA900 identifier does not match SOP class, 0xA700 (FIND) / 0xA701
(MOVE, GET) database unavailable, 0xC000 unable to process (a bug: logged).  Every query and
every retrieval is on the audit trail (``pacs.auditing``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Count, IntegerField, Max, OuterRef, Q, Subquery, Value
from django.db.models.functions import Coalesce
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

from audit import events
from pacs import auditing, storage
from pacs.dimse import db, requestor, ul
from pacs.dimse.acceptor import Aborted
from pacs.dimse.counting import counted
from pacs.dimse.matching import IdentifierError, _string_condition, _text_value
from pacs.dimse.transfer_syntaxes import UNCOMPRESSED
from pacs.lib.dicom_values import (
    ValueError_,
    format_da,
    has_wildcard,
    is_universal,
    parse_da,
    parse_range,
    parse_tm,
    wildcard_to_like,
)
from pacs.models import DicomNode, Instance, Series, Study
from project.peers import network

log = logging.getLogger("pacs.dimse.qr")

PENDING = 0xFF00
SUCCESS = 0x0000
CANCELED = 0xFE00
WARNING = 0xB000  # sub-operations complete, one or more failures or warnings (C.4.2.1.5)
OUT_OF_RESOURCES = 0xA700  # C-FIND (C.4.1.1.4)
OUT_OF_RESOURCES_MATCHES = 0xA701  # C-MOVE, C-GET: unable to calculate the number of matches
OUT_OF_RESOURCES_SUBOPERATIONS = 0xA702  # unable to perform sub-operations
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"
DEPTH = {PATIENT: 0, STUDY: 1, SERIES: 2, IMAGE: 3}
UNIQUE_KEY = {PATIENT: "PatientID", STUDY: "StudyInstanceUID", SERIES: "SeriesInstanceUID", IMAGE: "SOPInstanceUID"}

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


@dataclass(frozen=True)
class QKey:
    """A key of the index: its level, its column on that level's model (None: not held,
    returned empty) and how it is matched (``text``, ``pn``, ``uid``, ``date`` on a DateField,
    ``da_text`` / ``tm_text`` on a DA / TM kept as text, ``int``, ``modalities``, ``count``)."""

    level: str
    column: str | None
    kind: str = "text"


# PS3.4 C.6.1.1 (Patient Root) and C.6.2.1 (Study Root): the keys supported, by level.
KEYS: dict[str, QKey] = {
    "PatientName": QKey(PATIENT, "patient_name", "pn"),
    "PatientID": QKey(PATIENT, "patient_id"),
    "IssuerOfPatientID": QKey(PATIENT, "issuer_of_patient_id"),
    "PatientBirthDate": QKey(PATIENT, "patient_birth_date", "da_text"),
    "PatientSex": QKey(PATIENT, "patient_sex"),
    "NumberOfPatientRelatedStudies": QKey(PATIENT, "studies", "count"),
    "NumberOfPatientRelatedSeries": QKey(PATIENT, "series", "count"),
    "NumberOfPatientRelatedInstances": QKey(PATIENT, "instances", "count"),
    "StudyInstanceUID": QKey(STUDY, "study_instance_uid", "uid"),
    "StudyDate": QKey(STUDY, "study_date", "date"),
    "StudyTime": QKey(STUDY, "study_time", "tm_text"),
    "AccessionNumber": QKey(STUDY, "accession_number"),
    "StudyDescription": QKey(STUDY, "study_description"),
    "ModalitiesInStudy": QKey(STUDY, "modalities_in_study", "modalities"),
    "NumberOfStudyRelatedSeries": QKey(STUDY, "series", "count"),
    "NumberOfStudyRelatedInstances": QKey(STUDY, "instances", "count"),
    "StudyID": QKey(STUDY, None),
    "ReferringPhysicianName": QKey(STUDY, None),
    "SeriesInstanceUID": QKey(SERIES, "series_instance_uid", "uid"),
    "Modality": QKey(SERIES, "modality"),
    "SeriesNumber": QKey(SERIES, "series_number", "int"),
    "SeriesDescription": QKey(SERIES, "series_description"),
    "NumberOfSeriesRelatedInstances": QKey(SERIES, "instances", "count"),
    "SOPInstanceUID": QKey(IMAGE, "sop_instance_uid", "uid"),
    "SOPClassUID": QKey(IMAGE, "sop_class_uid", "uid"),
    "InstanceNumber": QKey(IMAGE, "instance_number", "int"),
}

# The ORM path from the model queried at a level to the columns of a key's level.
_PREFIX = {
    PATIENT: {PATIENT: ""},
    STUDY: {PATIENT: "", STUDY: ""},
    SERIES: {PATIENT: "study__", STUDY: "study__", SERIES: ""},
    IMAGE: {PATIENT: "study__", STUDY: "study__", SERIES: "series__", IMAGE: ""},
}
_PATIENT_PAIR = {PATIENT: ("patient_id", "issuer_of_patient_id"), STUDY: ("patient_id", "issuer_of_patient_id"),
                 SERIES: ("study__patient_id", "study__issuer_of_patient_id"),
                 IMAGE: ("study__patient_id", "study__issuer_of_patient_id")}


def key_level(keyword: str, top: str) -> str:
    """The level of a key in a model: in Study Root the patient's attributes are study keys."""
    level = KEYS[keyword].level
    return STUDY if level == PATIENT and top == STUDY else level


@dataclass
class Query:
    level: str
    top: str
    conditions: list = field(default_factory=list)
    returned: list = field(default_factory=list)  # (keyword, tag, VR) in identifier order
    counts: set = field(default_factory=set)  # count keywords asked
    charset_requested: bool = False


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


def _condition(path: str, spec: QKey, keyword: str, value) -> Q | None:
    kind = spec.kind
    if kind == "text":
        return _string_condition(path, _text_value(value))
    if kind == "pn":
        return _string_condition(path, _text_value(value), pn=True,
                                 case_insensitive=settings.QR_PATIENT_NAME_CASE_INSENSITIVE)
    if kind == "uid":
        uids = [v.strip().rstrip("\x00") for v in _text_value(value, ui=True) if v.strip()]
        if not uids or all(is_universal(u) for u in uids):
            return None
        if any(has_wildcard(u) for u in uids):
            raise IdentifierError(f"{keyword}: no wildcards in UIDs (C.2.2.2.2)")
        return Q(**{f"{path}__in": uids})
    text = str(value if value is not None else "").strip()
    if is_universal(text):
        return None
    if kind == "int":
        try:
            return Q(**{path: int(text)})
        except ValueError:
            raise IdentifierError(f"{keyword}: not a number: {text!r}") from None
    if kind in ("date", "da_text"):
        lo, hi = parse_range(text, parse_da)
        if kind == "date":
            return Q(**({f"{path}__gte": lo} if lo else {})) & Q(**({f"{path}__lte": hi} if hi else {}))
        condition = ~Q(**{path: ""})
        if lo:
            condition &= Q(**{f"{path}__gte": format_da(lo)})
        if hi:
            condition &= Q(**{f"{path}__lte": format_da(hi)})
        return condition
    if kind == "tm_text":
        lo, hi = parse_range(text, parse_tm)
        condition = ~Q(**{path: ""})
        if lo:
            condition &= Q(**{f"{path}__gte": lo.strftime("%H%M%S")})
        if hi:
            condition &= Q(**{f"{path}__lte": hi.strftime("%H%M%S.%f")})
        return condition
    if kind == "modalities":
        return _modalities_condition(path, _text_value(value))
    return None  # count: returned, never matched


def _modalities_condition(path: str, values: list[str]) -> Q | None:
    """ModalitiesInStudy (0008,0061) is multi-valued (``CT\\PR``): a value matches when one of
    the study's modalities does (C.2.2.2.1, with wildcards C.2.2.2.4); several values are OR-ed."""
    values = [v.strip() for v in values]
    if any(is_universal(v) for v in values):
        return None
    combined = Q()
    for v in values:
        like = wildcard_to_like(v)
        combined |= (Q(**{f"{path}__dicom_like": like}) | Q(**{f"{path}__dicom_like": like + "\\\\%"})
                     | Q(**{f"{path}__dicom_like": "%\\\\" + like}) | Q(**{f"{path}__dicom_like": "%\\\\" + like + "\\\\%"}))
    return combined


def read_query(identifier: Dataset, top: str) -> Query:
    """The identifier of a C-FIND as a ``Query``; IdentifierError when it breaks the model."""
    level = _level_of(identifier, top)
    query = Query(level=level, top=top)
    prefix = _PREFIX[level]
    unique_above = set()
    for above in (PATIENT, STUDY, SERIES):
        if DEPTH[top] <= DEPTH[above] < DEPTH[level]:
            unique_above.add(UNIQUE_KEY[above])
            query.conditions.append(Q(**{prefix[above] + KEYS[UNIQUE_KEY[above]].column: _single(identifier,
                                                                                                 UNIQUE_KEY[above])}))
    for elem in identifier:
        keyword = elem.keyword
        if keyword == "SpecificCharacterSet":
            query.charset_requested = True
            continue
        if elem.tag.element == 0 or elem.tag.is_private or keyword in ("QueryRetrieveLevel", ""):
            continue
        if elem.VR == "SQ":
            query.returned.append((keyword, elem.tag, "SQ"))  # no sequence key is held: returned empty
            continue
        query.returned.append((keyword, elem.tag, elem.VR))
        spec = KEYS.get(keyword)
        if spec is None:
            continue  # not held: returned empty, matched universally
        depth = DEPTH[key_level(keyword, top)]
        if depth > DEPTH[level]:
            raise IdentifierError(f"{keyword} is a key of a level below {level} (C.4.1.2.2.1)")
        if spec.kind == "count":
            if depth == DEPTH[level]:
                query.counts.add(keyword)
            continue
        if spec.column is None or keyword in unique_above:
            continue  # not held, or a unique key above the level: matched above
        try:
            value = elem.value
        except Exception as exc:  # noqa: BLE001 - undecodable value in the identifier
            raise IdentifierError(f"{keyword} cannot be decoded: {exc}") from None
        try:
            condition = _condition(_PREFIX[level][spec.level] + spec.column, spec, keyword, value)
        except ValueError_ as exc:
            raise IdentifierError(f"{keyword}: {exc}") from None
        if condition is not None:
            query.conditions.append(condition)
    return query


def _count_of(model, fk: str, key: str):
    """How many ``model`` rows point at the row queried (a correlated COUNT subquery)."""
    return Coalesce(Subquery(model.objects.filter(**{fk: OuterRef(key)}).order_by().values(fk)
                             .annotate(n=Count("pk")).values("n")[:1], output_field=IntegerField()), Value(0))


def _columns(query: Query) -> list[str]:
    """The ORM paths an answer at the query's level is built from: every held key at or above it."""
    prefix = _PREFIX[query.level]
    return sorted({prefix[spec.level] + spec.column
                   for k, spec in KEYS.items()
                   if spec.column and spec.kind != "count" and DEPTH[key_level(k, query.top)] <= DEPTH[query.level]})


def run_query(query: Query) -> list[dict]:
    """The one SQL query: rows as dicts keyed by ORM path (and count keywords), at most
    QR_MAX_RESULTS + 1 of them."""
    limit = settings.QR_MAX_RESULTS + 1
    live = Q(purged_at__isnull=True) if query.level in (PATIENT, STUDY) else Q(study__purged_at__isnull=True)
    if query.level == PATIENT:
        qs = Study.objects.filter(live)
        for condition in query.conditions:
            qs = qs.filter(condition)
        aggregates = {"patient_name": Max("patient_name"), "patient_birth_date": Max("patient_birth_date"),
                      "patient_sex": Max("patient_sex")}
        if "NumberOfPatientRelatedStudies" in query.counts:
            aggregates["NumberOfPatientRelatedStudies"] = Count("pk", distinct=True)
        if "NumberOfPatientRelatedSeries" in query.counts:
            aggregates["NumberOfPatientRelatedSeries"] = Count("series", distinct=True)
        if "NumberOfPatientRelatedInstances" in query.counts:
            aggregates["NumberOfPatientRelatedInstances"] = Count("instances", distinct=True)
        qs = (qs.order_by().values("patient_id", "issuer_of_patient_id").annotate(**aggregates)
              .order_by("patient_id", "issuer_of_patient_id"))
        return list(qs[:limit])
    model = {STUDY: Study, SERIES: Series, IMAGE: Instance}[query.level]
    qs = model.objects.filter(live)
    for condition in query.conditions:
        qs = qs.filter(condition)
    counts = {}
    if "NumberOfStudyRelatedSeries" in query.counts:
        counts["NumberOfStudyRelatedSeries"] = _count_of(Series, "study", "pk")
    if "NumberOfStudyRelatedInstances" in query.counts:
        counts["NumberOfStudyRelatedInstances"] = _count_of(Instance, "study", "pk")
    if "NumberOfSeriesRelatedInstances" in query.counts:
        counts["NumberOfSeriesRelatedInstances"] = _count_of(Instance, "series", "pk")
    if counts:
        qs = qs.annotate(**counts)
    order = {STUDY: ("study_date", "study_time", "pk"), SERIES: ("series_number", "pk"),
             IMAGE: ("instance_number", "pk")}[query.level]
    return list(qs.order_by(*order).values(*_columns(query), *counts)[:limit])


def find(identifier: Dataset, top: str, *, calling_ae_title: str) -> tuple[Query, list[dict]]:
    """``(query, rows)`` for a C-FIND identifier; rows at most QR_MAX_RESULTS (a cut is logged).
    Raises IdentifierError (0xA900) or a DatabaseError."""
    query = read_query(identifier, top)
    rows = run_query(query)
    limit = settings.QR_MAX_RESULTS
    if len(rows) > limit:
        log.warning("query/retrieve result cut at QR_MAX_RESULTS",
                    extra={"calling_ae_title": calling_ae_title, "level": query.level, "limit": limit})
        rows = rows[:limit]
    return query, rows


def _answer_value(keyword: str, query: Query, row: dict):
    if keyword == "QueryRetrieveLevel":
        return query.level
    if keyword == "RetrieveAETitle":
        return settings.DICOM_AE_TITLE
    if keyword == "InstanceAvailability":
        return "ONLINE"
    spec = KEYS.get(keyword)
    if spec is None or spec.column is None or DEPTH[key_level(keyword, query.top)] > DEPTH[query.level]:
        return None
    if spec.kind == "count":
        return row.get(keyword)
    raw = row.get(_PREFIX[query.level][spec.level] + spec.column)
    if raw is None or raw == "":
        return None
    if spec.kind == "date":
        return format_da(raw)
    if spec.kind == "modalities":
        return [m for m in str(raw).split("\\") if m]
    if spec.kind == "int":
        return int(raw)
    return str(raw)


def build_answer(query: Query, row: dict) -> Dataset:
    """One pending answer (C.4.1.1.3.2): the keys asked for, each filled from the index or
    empty, the unique keys of the levels down to the query level and QueryRetrieveLevel."""
    ds = Dataset()
    returned = list(query.returned)
    asked = {keyword for keyword, _tag, _vr in returned}
    for level in (PATIENT, STUDY, SERIES, IMAGE):
        if DEPTH[query.top] <= DEPTH[level] <= DEPTH[query.level] and UNIQUE_KEY[level] not in asked:
            tag = tag_for_keyword(UNIQUE_KEY[level])
            returned.append((UNIQUE_KEY[level], tag, dictionary_VR(tag)))
    returned.append(("QueryRetrieveLevel", tag_for_keyword("QueryRetrieveLevel"), "CS"))
    non_ascii = False
    for keyword, tag, vr in returned:
        if vr == "SQ":
            ds.add_new(tag, "SQ", [])
            continue
        value = _answer_value(keyword, query, row)
        if isinstance(value, str) and not value.isascii():
            non_ascii = True
        ds[tag] = DataElement(tag, vr, None if value in (None, "", []) else value, validation_mode=config.IGNORE)
    if non_ascii:
        ds.SpecificCharacterSet = "ISO_IR 192"
    elif query.charset_requested:
        ds.SpecificCharacterSet = ""
    return ds


def _patients(query: Query, rows: list[dict]) -> list[tuple[str, str]]:
    id_path, issuer_path = _PATIENT_PAIR[query.level]
    pairs: list = []
    for row in rows:
        pair = (row.get(id_path) or "", row.get(issuer_path) or "")
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
            answer = build_answer(query, row)
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


def retrieve_filter(identifier: Dataset, top: str) -> Q:
    """The instances a C-MOVE / C-GET identifier names (C.4.2.2.1, baseline): the unique keys
    of the levels above the retrieve level with one value each, the retrieve level's with one
    or more (a list of UIDs); nothing else is matched."""
    level = _level_of(identifier, top)
    condition = Q(study__purged_at__isnull=True)
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


def plan_retrieval(identifier: Dataset, top: str) -> list[ToSend]:
    """The instances to send, in study, series and instance order."""
    rows = (Instance.objects.filter(retrieve_filter(identifier, top))
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
    tally = _Tally(len(items))
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
    if refusal is not None:
        _audit_retrieval(event, identifier, None, calling, events.SERIOUS_FAILURE)
        yield refusal
        return
    tally = _Tally(len(items))

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


def _failure(code: int, text: str) -> Dataset:
    """A failure status with ErrorComment (0000,0902), at most 64 characters."""
    status = Dataset()
    status.Status = code
    status.ErrorComment = text[:64]
    return status


def handlers():
    # Each answer counted per calling AE and status (pacs.dimse.counting).
    return {"C-FIND": counted("Q/R C-FIND", on_c_find), "C-MOVE": counted("C-MOVE", on_c_move),
            "C-GET": counted("C-GET", on_c_get)}
