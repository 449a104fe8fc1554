"""Queries of the image index (Patient / Study / Series / Instance) with the DICOM matching rules.

One entry point, :func:`search`, takes plain values (a query level, ``{keyword: value(s)}``
matching keys, the attributes to return, the unique keys the query is scoped to) and answers
with one SQL query over ``pacs.models.images``: every rule is a condition of that query, nothing
is filtered in Python.  Both searches of the index call it: QIDO-RS (PS3.18 10.6,
``pacs.dicomweb``), whose matching PS3.18 8.3.4 defines as that of C-FIND, and the
Query/Retrieve C-FIND SCP (PS3.4 C.4.1, ``pacs.dimse.qr``).  The rules, of PS3.4 C.2.2.2:

- single value matching (C.2.2.2.1), trailing spaces insignificant; PatientName without regard
  to case when ``QR_PATIENT_NAME_CASE_INSENSITIVE`` is on (a choice C.2.2.2.1 leaves to PN);
- universal matching (C.2.2.2.3): an empty value or one made only of ``*`` (UIDs too);
- wildcard matching (C.2.2.2.4): ``*`` and ``?`` in string keys -> SQL ``LIKE``; none in UIDs;
- range matching (C.2.2.2.5): ``A-B``, ``-B``, ``A-`` on DA and TM keys, an empty stored value
  matching no range; StudyDate with StudyTime form one combined date-time range (C.2.2.2.5.1);
- list of UID matching (C.2.2.2.2): several UIDs -> ``IN``;
- several values of a string key (``A\\B``, as C-FIND sends them): A or B;
- the hierarchy (C.4.1.2.2.1): a key of a level below the query level is refused; the unique
  keys of the levels above (``patient_id``, ``study_uid``, ``series_uid``: a C-FIND
  identifier's single values, a QIDO-RS resource path) narrow the query by equality;
- studies whose files were purged after archiving are found too: their index rows stay, and a
  retrieval fetches them back from the VNA on demand (``pacs.services.recall``).

A key or value that breaks these forms raises :class:`QueryError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection
from django.db.models import Count, Exists, IntegerField, Max, OuterRef, Q
from django.db.models.expressions import RawSQL
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

import pacs.lib.lookups  # noqa: F401 - registers dicom_like and upper
from pacs.lib.dicom_values import (
    ValueError_,
    has_wildcard,
    is_universal,
    normalize_pn,
    parse_da,
    parse_range,
    parse_tm,
    wildcard_to_like,
)
from pacs.models import Instance, Series, Study

PATIENT = "PATIENT"
STUDY = "STUDY"
SERIES = "SERIES"
IMAGE = "IMAGE"
LEVELS = (PATIENT, STUDY, SERIES, IMAGE)
DEPTH = {PATIENT: 0, STUDY: 1, SERIES: 2, IMAGE: 3}
UNIQUE_KEY = {PATIENT: "PatientID", STUDY: "StudyInstanceUID", SERIES: "SeriesInstanceUID", IMAGE: "SOPInstanceUID"}
#: Each result row also carries its patient, (PatientID, IssuerOfPatientID), under this key:
#: what the audit trail names, whether or not it is returned.
PATIENT_PAIR = "_patient"


class QueryError(ValueError):
    """A matching key or value the index cannot be queried with (QIDO-RS: 400; C-FIND: 0xA900)."""


@dataclass(frozen=True)
class Attribute:
    """An attribute the index holds: its level, the model field (on that level's model; the
    patient's are kept on the study) and how it is matched (``text`` | ``pn`` | ``uid`` | ``da``
    | ``da_text`` | ``tm`` | ``int`` | ``modalities`` | ``count``: returned only)."""

    keyword: str
    level: str
    field: str
    kind: str = "text"

    @property
    def tag(self) -> str:
        return f"{tag_for_keyword(self.keyword):08X}"

    @property
    def vr(self) -> str:
        return dictionary_VR(self.keyword)


# PS3.4 C.6.1.1 (Patient Root), C.6.2.1 (Study Root), PS3.18 Tables 10.6.3-3 to -5.
ATTRIBUTES: dict[str, Attribute] = {a.keyword: a for a in (
    Attribute("PatientName", PATIENT, "patient_name", "pn"),
    Attribute("PatientID", PATIENT, "patient_id"),
    Attribute("IssuerOfPatientID", PATIENT, "issuer_of_patient_id"),
    Attribute("PatientBirthDate", PATIENT, "patient_birth_date", "da_text"),
    Attribute("PatientSex", PATIENT, "patient_sex"),
    Attribute("NumberOfPatientRelatedStudies", PATIENT, "n_patient_studies", "count"),
    Attribute("NumberOfPatientRelatedSeries", PATIENT, "n_patient_series", "count"),
    Attribute("NumberOfPatientRelatedInstances", PATIENT, "n_patient_instances", "count"),
    Attribute("StudyInstanceUID", STUDY, "study_instance_uid", "uid"),
    Attribute("StudyDate", STUDY, "study_date", "da"),
    Attribute("StudyTime", STUDY, "study_time", "tm"),
    Attribute("AccessionNumber", STUDY, "accession_number"),
    Attribute("ModalitiesInStudy", STUDY, "modalities_in_study", "modalities"),
    Attribute("StudyDescription", STUDY, "study_description"),
    Attribute("NumberOfStudyRelatedSeries", STUDY, "n_study_series", "count"),
    Attribute("NumberOfStudyRelatedInstances", STUDY, "n_study_instances", "count"),
    # PS3.4 C.4.23.1.1 / PS3.3 C.4.23.1.1: ONLINE, or NEARLINE for a study whose files were purged
    # here after archiving (a retrieval fetches them back from the VNA first).  Returned only.
    Attribute("InstanceAvailability", STUDY, "purged_at", "availability"),
    Attribute("SeriesInstanceUID", SERIES, "series_instance_uid", "uid"),
    Attribute("Modality", SERIES, "modality"),
    Attribute("SeriesNumber", SERIES, "series_number", "int"),
    Attribute("SeriesDescription", SERIES, "series_description"),
    Attribute("NumberOfSeriesRelatedInstances", SERIES, "n_series_instances", "count"),
    Attribute("SOPInstanceUID", IMAGE, "sop_instance_uid", "uid"),
    Attribute("SOPClassUID", IMAGE, "sop_class_uid", "uid"),
    Attribute("InstanceNumber", IMAGE, "instance_number", "int"),
)}

#: Kinds of attribute that are returned only, never matched (a value given is ignored).
RETURN_ONLY = ("count", "availability")

#: Returned by default at each level (PS3.18 Tables 10.6.3-3, -4, -5: the required return
#: attributes the index holds; the patient's are the study's).  A query at a lower level
#: without the upper level's UID in its path also returns the upper levels' defaults.
DEFAULT_RETURN = {
    PATIENT: (),
    STUDY: ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "PatientName", "PatientID",
            "PatientBirthDate", "PatientSex", "StudyInstanceUID", "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances"),
    SERIES: ("Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription",
             "NumberOfSeriesRelatedInstances"),
    IMAGE: ("SOPClassUID", "SOPInstanceUID", "InstanceNumber"),
}

_MODEL = {PATIENT: Study, STUDY: Study, SERIES: Series, IMAGE: Instance}
# Index order: patients by ID, studies by date and time, series and instances by number.
_ORDER = {PATIENT: ("patient_id", "issuer_of_patient_id"), STUDY: ("study_date", "study_time", "pk"),
          SERIES: ("study_id", "series_number", "pk"), IMAGE: ("series_id", "instance_number", "pk")}


def _prefix(level: str, attribute_level: str) -> str:
    """ORM path from the queried level's model to the model holding an attribute's level."""
    if attribute_level in (PATIENT, STUDY):
        return "" if level in (PATIENT, STUDY) else "study__"
    if attribute_level == SERIES:
        return "" if level == SERIES else "series__"
    return ""


def attribute(key: str) -> Attribute | None:
    """The index attribute named by a keyword or an eight-digit hex tag (None: not held)."""
    return ATTRIBUTES.get(keyword_of(key))


def keyword_of(key: str) -> str:
    """A DICOM keyword for ``key`` (a keyword or ``ggggeeee``); QueryError when it names none."""
    text = key.strip()
    if len(text) == 8 and all(c in "0123456789abcdefABCDEF" for c in text):
        keyword = keyword_for_tag(int(text, 16))
        if keyword:
            return keyword
        raise QueryError(f"{text} is not a DICOM attribute this server knows")
    if tag_for_keyword(text) is None:
        raise QueryError(f"{text[:64]!r} is not a DICOM keyword or tag")
    return text


@dataclass
class Query:
    """What :func:`search` is asked: the level, matching keys (a value, or a list of values
    matched as one or another), the return attributes (``defaults``: those of the level as
    well), the unique keys of the levels above (``patient_id``, ``study_uid``,
    ``series_uid``), a page of the results."""

    level: str
    keys: dict[str, str | list[str]] = field(default_factory=dict)
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    defaults: bool = True
    patient_id: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    limit: int = 100
    offset: int = 0


@dataclass
class Result:
    rows: list[dict]  # {keyword: value}: str, int, date or None; and PATIENT_PAIR
    more: bool  # matches beyond the page
    returned: tuple[str, ...]  # the keywords of each row, in order


def _returnable(keyword: str, query: Query) -> bool:
    """Held at or above the query level; a patient's counts at the patient level only."""
    spec = ATTRIBUTES.get(keyword)
    if spec is None or DEPTH[spec.level] > DEPTH[query.level]:
        return False
    return not (spec.kind == "count" and spec.level == PATIENT and query.level != PATIENT)


def returned_keywords(query: Query) -> tuple[str, ...]:
    """The attributes each row carries: the defaults of the level (and of the upper levels a
    query not scoped to them needs), every attribute of them all with ``include_all``, those
    asked by ``include`` and the matching keys that the index holds at or above the level."""
    scoped = {STUDY: query.study_uid is not None, SERIES: query.series_uid is not None}
    if query.include_all:
        wanted = [k for k in ATTRIBUTES if _returnable(k, query)]
    elif query.defaults:
        wanted = [k for lvl in LEVELS if DEPTH[lvl] <= DEPTH[query.level]
                  if lvl == query.level or not scoped.get(lvl) for k in DEFAULT_RETURN[lvl]]
    else:
        wanted = []
    wanted += sorted(k for k in query.include if _returnable(k, query))
    for lvl in (STUDY, SERIES, IMAGE) if query.level != PATIENT else (PATIENT,):
        if DEPTH[lvl] <= DEPTH[query.level]:
            wanted.append(UNIQUE_KEY[lvl])  # the unique keys of the level and above, always
    wanted += [k for k in query.keys if _returnable(k, query)]
    return tuple(dict.fromkeys(wanted))


def _values(raw: str | list[str], *, uid: bool = False) -> list[str]:
    """A key's values: a list as given; several UIDs also separated by ``,`` or ``\\`` (list of
    UID matching).  NUL pads only a UID at its end (PS3.5 6.2); anywhere else no stored value
    can match it."""
    values = [str(v) for v in raw] if isinstance(raw, (list, tuple)) else [str(raw)]
    if uid:
        values = [part.strip().rstrip("\x00") for v in values for part in v.replace("\\", ",").split(",")]
    if not values:
        values = [""]
    if any("\x00" in v for v in values):
        raise QueryError("a value holds a NUL character")
    return values


def _or(conditions: list[Q]) -> Q:
    combined = conditions[0]
    for condition in conditions[1:]:
        combined |= condition
    return combined


def string_condition(path: str, values: list[str], *, case_insensitive: bool = False, pn: bool = False) -> Q | None:
    """Single value or wildcard matching of a string key, several values OR-ed; None = universal."""
    values = [normalize_pn(v) if pn else v.strip() for v in values]
    if any(is_universal(v) for v in values):
        return None
    conditions = []
    for v in values:
        target, v = (f"{path}__upper", v.upper()) if case_insensitive else (path, v)
        if has_wildcard(v):
            conditions.append(Q(**{f"{target}__dicom_like": wildcard_to_like(v)}))
        else:
            conditions.append(Q(**{target: v}))
    return _or(conditions)


def uid_condition(path: str, values: list[str]) -> Q | None:
    """List of UID matching (C.2.2.2.2); a lone ``*`` is universal, another wildcard refused."""
    values = [v for v in values if v]
    if not values or any(is_universal(v) for v in values):
        return None
    if any(has_wildcard(v) for v in values):
        raise QueryError("a UID key takes no wildcards (list of UID matching)")
    return Q(**{f"{path}__in": values})


def _range(raw: str, parse) -> tuple:
    try:
        return parse_range(raw.strip(), parse)
    except ValueError_ as exc:
        raise QueryError(str(exc)) from None


def _tm_bounds(raw: str) -> tuple[str | None, str | None]:
    """A TM range as the ``HHMMSS[.F]`` texts it is compared with (a stored TM sorts as the time):
    the lower bound to the second, the upper with its fraction."""
    lower, upper = _range(raw, parse_tm)
    return (lower.strftime("%H%M%S") if lower else None), (upper.strftime("%H%M%S.%f") if upper else None)


def _bounded(path: str, lower, upper, *, text: bool) -> Q:
    """``lower <= path <= upper`` (either end open); a value kept as text, empty, matches no range."""
    condition = ~Q(**{path: ""}) if text else Q()
    if lower is not None:
        condition &= Q(**{f"{path}__gte": lower})
    if upper is not None:
        condition &= Q(**{f"{path}__lte": upper})
    return condition


def _range_condition(kind: str, path: str, values: list[str]) -> Q | None:
    """Range matching (C.2.2.2.5) of a DA kept as a date (``da``) or as text (``da_text``:
    ``YYYYMMDD`` sorts as the date does), or of a TM kept as text (``tm``)."""
    if any(is_universal(v.strip()) for v in values):
        return None
    conditions = []
    for raw in values:
        if kind == "tm":
            conditions.append(_bounded(path, *_tm_bounds(raw), text=True))
            continue
        lower, upper = _range(raw, parse_da)
        if kind == "da_text":
            lower, upper = (d.strftime("%Y%m%d") if d else None for d in (lower, upper))
        conditions.append(_bounded(path, lower, upper, text=kind == "da_text"))
    return _or(conditions)


def _date_time_range(date_path: str, time_path: str, date_raw: str, time_raw: str) -> Q:
    """StudyDate and StudyTime together: one range from the first date at the lower time to the
    last date at the upper time (PS3.4 C.2.2.2.5.1)."""
    lo_date, hi_date = _range(date_raw, parse_da)
    lo_time, hi_time = _tm_bounds(time_raw)
    condition = Q()
    if lo_date is not None:
        same = Q(**{date_path: lo_date})
        if lo_time is not None:
            same &= Q(**{f"{time_path}__gte": lo_time})
        condition &= Q(**{f"{date_path}__gt": lo_date}) | same
    elif lo_time is not None:
        condition &= Q(**{f"{time_path}__gte": lo_time})
    if hi_date is not None:
        same = Q(**{date_path: hi_date})
        if hi_time is not None:
            same &= Q(**{f"{time_path}__lte": hi_time})
        condition &= Q(**{f"{date_path}__lt": hi_date}) | same
    elif hi_time is not None:
        condition &= Q(**{f"{time_path}__lte": hi_time})
    return condition


def _integer(path: str, values: list[str]) -> Q | None:
    texts = [v.strip() for v in values]
    if any(is_universal(t) for t in texts):
        return None
    try:
        return Q(**{f"{path}__in": [int(t) for t in texts]})
    except ValueError:
        raise QueryError(f"{texts[0][:32]!r} is not an integer (IS)") from None


def _modalities(prefix: str, values: list[str]) -> Q | None:
    """ModalitiesInStudy: a study matches when one of its series has the modality (or one of
    several, ``CT\\MR`` or ``CT,MR``); wildcards allowed."""
    values = [part.strip() for v in values for part in v.replace("\\", ",").split(",")]
    if any(is_universal(v) for v in values):
        return None
    conditions = []
    for v in values:
        series = Series.objects.filter(study=OuterRef(f"{prefix}pk" if prefix else "pk"))
        modality = Q(modality__dicom_like=wildcard_to_like(v)) if has_wildcard(v) else Q(modality=v)
        conditions.append(Q(Exists(series.filter(modality))))
    return _or(conditions)


def _key_condition(spec: Attribute, level: str, raw: str | list[str]) -> Q | None:
    prefix = _prefix(level, spec.level)
    path = prefix + spec.field
    if spec.kind == "uid":
        return uid_condition(path, _values(raw, uid=True))
    values = _values(raw)
    if spec.kind == "modalities":
        return _modalities(prefix, values)
    if spec.kind == "pn":
        return string_condition(path, values, pn=True, case_insensitive=settings.QR_PATIENT_NAME_CASE_INSENSITIVE)
    if spec.kind in ("da", "da_text", "tm"):
        return _range_condition(spec.kind, path, values)
    if spec.kind == "int":
        return _integer(path, values)
    return string_condition(path, values)


def _single_value(raw: str | list[str]) -> str | None:
    """The one value of a key; None when universal (then it is no part of a combined range)."""
    values = _values(raw)
    if len(values) != 1 or is_universal(values[0].strip()):
        return None
    return values[0]


def _conditions(query: Query) -> Q:
    condition = Q()
    keys = dict(query.keys)
    for keyword in keys:
        spec = ATTRIBUTES.get(keyword)
        if spec is not None and spec.kind != "availability" and DEPTH[spec.level] > DEPTH[query.level]:
            raise QueryError(f"{keyword} is not an attribute of the {query.level.lower()} level or above")
    date, time = _single_value(keys.get("StudyDate", "")), _single_value(keys.get("StudyTime", ""))
    if date is not None and time is not None:
        del keys["StudyDate"], keys["StudyTime"]
        study = _prefix(query.level, STUDY)
        condition &= _date_time_range(study + "study_date", study + "study_time", date, time)
    for keyword, raw in keys.items():
        spec = ATTRIBUTES.get(keyword)
        if spec is None or spec.kind in RETURN_ONLY:
            continue
        one = _key_condition(spec, query.level, raw)
        if one is not None:
            condition &= one
    study = _prefix(query.level, STUDY)
    for value, path in ((query.patient_id, study + "patient_id"), (query.study_uid, study + "study_instance_uid"),
                        (query.series_uid, _prefix(query.level, SERIES) + "series_instance_uid")):
        if value is not None:
            condition &= Q(**{path: value})
    return condition


def _count(model, link: str, level: str, column: str) -> RawSQL:
    """The number of ``model`` rows whose foreign key ``link`` is the matched row's ``column``
    (a field of the ``level`` model): a correlated ``COUNT(*)`` subquery, 0 when there are none.
    Written as SQL from the models' names: built through the ORM (Subquery, OuterRef) these
    counts took as long to compile as the rest of the search with its execution."""
    qn = connection.ops.quote_name
    main = _MODEL[level]._meta
    fk = model._meta.get_field(link).column
    return RawSQL(f"SELECT COUNT(*) FROM {qn(model._meta.db_table)} counted "
                  f"WHERE counted.{qn(fk)} = {qn(main.db_table)}.{qn(main.get_field(column).column)}", (),
                  output_field=IntegerField())


def _patients(rows, returned: tuple[str, ...]):
    """The patient level: the studies' (PatientID, IssuerOfPatientID) pairs, the patient's
    other attributes taken from its studies, its counts over them."""
    aggregates = {ATTRIBUTES[k].field: Max(ATTRIBUTES[k].field)
                  for k in ("PatientName", "PatientBirthDate", "PatientSex") if k in returned}
    for keyword, counted in (("NumberOfPatientRelatedStudies", "pk"), ("NumberOfPatientRelatedSeries", "series"),
                             ("NumberOfPatientRelatedInstances", "instances")):
        if keyword in returned:
            aggregates[ATTRIBUTES[keyword].field] = Count(counted, distinct=True)
    # DISTINCT: without an aggregate asked for there is no GROUP BY, and a patient with several
    # studies would be answered once per study.
    return rows.order_by().values("patient_id", "issuer_of_patient_id").annotate(**aggregates).distinct()


def _fetch(rows, time_limit_ms: int | None) -> list[tuple]:
    """The rows of the query set ``rows``; with ``time_limit_ms`` on PostgreSQL, the statement is
    cancelled after that long (``query_canceled``, SQLSTATE 57014, raised as OperationalError).
    Outside a transaction the limit and the statement go in one query string, one round trip:
    statements sent together run as one implicit transaction, so ``SET LOCAL`` holds for that
    statement only (PostgreSQL, "Multiple Statements in a Simple Query"; psycopg's client-side
    binding sends them so).  Those rows come as the driver gives them: the index's columns need
    no ORM converter on PostgreSQL.  Inside a transaction the limit holds to its end."""
    if time_limit_ms is None or connection.vendor != "postgresql":
        return list(rows)
    limit = f"SET LOCAL statement_timeout = {int(time_limit_ms)}"
    with connection.cursor() as cursor:
        if connection.in_atomic_block:
            cursor.execute(limit)
            return list(rows)
        sql, params = rows.query.sql_with_params()
        cursor.execute(f"{limit}; {sql}", params)
        cursor.nextset()
        return cursor.fetchall()


def search(query: Query, *, time_limit_ms: int | None = None) -> Result:
    """The matches of ``query``, one page of them (``offset``, ``limit``), in index order;
    ``time_limit_ms``: on PostgreSQL, the search is cancelled after that long (see ``_fetch``)."""
    if query.level not in LEVELS:
        raise QueryError(f"unknown query level {query.level!r}")
    returned = returned_keywords(query)
    rows = _MODEL[query.level].objects.filter(_conditions(query))
    paths = {k: ATTRIBUTES[k].field if ATTRIBUTES[k].kind == "count"
             else _prefix(query.level, ATTRIBUTES[k].level) + ATTRIBUTES[k].field for k in returned}
    study = _prefix(query.level, STUDY)
    if query.level == PATIENT:
        rows = _patients(rows, returned)
    else:
        study_pk = "id" if query.level == STUDY else "study"
        if "NumberOfStudyRelatedSeries" in returned:
            rows = rows.annotate(n_study_series=_count(Series, "study", query.level, study_pk))
        if "NumberOfStudyRelatedInstances" in returned:
            rows = rows.annotate(n_study_instances=_count(Instance, "study", query.level, study_pk))
        if "NumberOfSeriesRelatedInstances" in returned:
            rows = rows.annotate(n_series_instances=_count(
                Instance, "series", query.level, "id" if query.level == SERIES else "series"))
    columns = [*paths.values(), study + "patient_id", study + "issuer_of_patient_id"]
    page = _fetch(rows.order_by(*_ORDER[query.level]).values_list(*columns)[query.offset:query.offset + query.limit + 1],
                  time_limit_ms)
    found = []
    for row in page[:query.limit]:
        values = dict(zip(paths, row[:-2], strict=True))
        if "InstanceAvailability" in values:
            values["InstanceAvailability"] = "ONLINE" if values["InstanceAvailability"] is None else "NEARLINE"
        values[PATIENT_PAIR] = (row[-2], row[-1])
        found.append(values)
    return Result(rows=found, more=len(page) > query.limit, returned=returned)
