"""Queries of the image index (Study / Series / Instance) with the DICOM matching rules.

One entry point, :func:`search`, takes plain values (a query level, ``{keyword: value}``
matching keys, the attributes to return) and answers with one SQL query over
``pacs.models.images``: every rule is a condition of that query, nothing is filtered in
Python.  QIDO-RS (PS3.18 10.6, ``pacs.dicomweb``) calls it; the rules are those of C-FIND
(PS3.4 C.2.2.2), so a Query/Retrieve SCP can call the same function:

- single value matching (C.2.2.2.1), trailing spaces insignificant; PatientName ignores case;
- universal matching (C.2.2.2.3): an empty value or one made only of ``*``;
- wildcard matching (C.2.2.2.4): ``*`` and ``?`` in string keys -> SQL ``LIKE``;
- range matching (C.2.2.2.5): ``A-B``, ``-B``, ``A-`` on DA and TM keys; StudyDate with
  StudyTime form one combined date-time range (C.2.2.2.5.1);
- list of UID matching (C.2.2.2.2): several UIDs -> ``IN``.

A key or value that breaks these forms raises :class:`QueryError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Count, Exists, IntegerField, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
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

STUDY = "STUDY"
SERIES = "SERIES"
IMAGE = "IMAGE"
LEVELS = (STUDY, SERIES, IMAGE)
#: Each result row also carries its patient, (PatientID, IssuerOfPatientID), under this key:
#: what the audit trail names, whether or not it is returned.
PATIENT = "_patient"


class QueryError(ValueError):
    """A matching key or value the index cannot be queried with (QIDO-RS: 400)."""


@dataclass(frozen=True)
class Attribute:
    """An attribute the index holds: its level, the model field (on that level's model) and
    how it is matched (``text`` | ``pn`` | ``uid`` | ``da`` | ``da_text`` | ``tm`` | ``int`` |
    ``modalities`` | ``count``: returned only)."""

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


ATTRIBUTES: dict[str, Attribute] = {a.keyword: a for a in (
    Attribute("StudyInstanceUID", STUDY, "study_instance_uid", "uid"),
    Attribute("StudyDate", STUDY, "study_date", "da"),
    Attribute("StudyTime", STUDY, "study_time", "tm"),
    Attribute("AccessionNumber", STUDY, "accession_number"),
    Attribute("ModalitiesInStudy", STUDY, "modalities_in_study", "modalities"),
    Attribute("StudyDescription", STUDY, "study_description"),
    Attribute("PatientName", STUDY, "patient_name", "pn"),
    Attribute("PatientID", STUDY, "patient_id"),
    Attribute("IssuerOfPatientID", STUDY, "issuer_of_patient_id"),
    Attribute("PatientBirthDate", STUDY, "patient_birth_date", "da_text"),
    Attribute("PatientSex", STUDY, "patient_sex"),
    Attribute("NumberOfStudyRelatedSeries", STUDY, "n_study_series", "count"),
    Attribute("NumberOfStudyRelatedInstances", STUDY, "n_study_instances", "count"),
    Attribute("SeriesInstanceUID", SERIES, "series_instance_uid", "uid"),
    Attribute("Modality", SERIES, "modality"),
    Attribute("SeriesNumber", SERIES, "series_number", "int"),
    Attribute("SeriesDescription", SERIES, "series_description"),
    Attribute("NumberOfSeriesRelatedInstances", SERIES, "n_series_instances", "count"),
    Attribute("SOPInstanceUID", IMAGE, "sop_instance_uid", "uid"),
    Attribute("SOPClassUID", IMAGE, "sop_class_uid", "uid"),
    Attribute("InstanceNumber", IMAGE, "instance_number", "int"),
)}

#: Returned by default at each level (PS3.18 Tables 10.6.3-3, -4, -5: the required return
#: attributes the index holds).  A query at a lower level without the upper level's UID in
#: its path also returns the upper levels' defaults.
DEFAULT_RETURN = {
    STUDY: ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "PatientName", "PatientID",
            "PatientBirthDate", "PatientSex", "StudyInstanceUID", "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances"),
    SERIES: ("Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription",
             "NumberOfSeriesRelatedInstances"),
    IMAGE: ("SOPClassUID", "SOPInstanceUID", "InstanceNumber"),
}

_MODEL = {STUDY: Study, SERIES: Series, IMAGE: Instance}
# ORM path from the queried level's model to the model of an attribute's level.
_PREFIX = {
    (STUDY, STUDY): "", (SERIES, STUDY): "study__", (SERIES, SERIES): "",
    (IMAGE, STUDY): "study__", (IMAGE, SERIES): "series__", (IMAGE, IMAGE): "",
}
_DEPTH = {STUDY: 0, SERIES: 1, IMAGE: 2}


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
    """What :func:`search` is asked: the level, matching keys, the return attributes, the
    UIDs of the resource path (``study_uid``, ``series_uid``), a page of the results."""

    level: str
    keys: dict[str, str] = field(default_factory=dict)
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    study_uid: str | None = None
    series_uid: str | None = None
    limit: int = 100
    offset: int = 0


@dataclass
class Result:
    rows: list[dict]  # {keyword: value}: str, int, date or None
    more: bool  # matches beyond the page
    returned: tuple[str, ...]  # the keywords of each row, in order


def returned_keywords(query: Query) -> tuple[str, ...]:
    """The attributes each row carries: the defaults of the level (and of the upper levels a
    query not scoped to them needs), every attribute of them all with ``include_all``, and those
    asked by ``include`` that the index holds at or above the level."""
    depth = _DEPTH[query.level]
    levels = [lvl for lvl in LEVELS if _DEPTH[lvl] <= depth]
    scoped = {STUDY: query.study_uid is not None, SERIES: query.series_uid is not None}
    if query.include_all:
        wanted = [k for k, a in ATTRIBUTES.items() if a.level in levels]
    else:
        wanted = [k for lvl in levels if lvl == query.level or not scoped.get(lvl) for k in DEFAULT_RETURN[lvl]]
        wanted += sorted(k for k in query.include if k in ATTRIBUTES and ATTRIBUTES[k].level in levels)
    for uid_keyword, lvl in (("StudyInstanceUID", STUDY), ("SeriesInstanceUID", SERIES), ("SOPInstanceUID", IMAGE)):
        if lvl in levels:
            wanted.append(uid_keyword)  # the unique keys of the level and above, always
    wanted += [k for k in query.keys if k in ATTRIBUTES and ATTRIBUTES[k].level in levels]
    return tuple(dict.fromkeys(wanted))


def _values(raw: str, *, uid: bool) -> list[str]:
    """A key's values: several UIDs separated by ``,`` or ``\\`` (list of UID matching), else one."""
    if "\x00" in raw:
        raise QueryError("a value holds a NUL character")
    if uid:
        return [v.strip() for v in raw.replace("\\", ",").split(",")]
    return [raw]


def _string(path: str, raw: str, *, pn: bool = False) -> Q | None:
    value = normalize_pn(raw) if pn else raw.strip()
    if is_universal(value):
        return None
    target, value = (f"{path}__upper", value.upper()) if pn else (path, value)
    if has_wildcard(value):
        return Q(**{f"{target}__dicom_like": wildcard_to_like(value)})
    return Q(**{target: value})


def _uids(path: str, raw: str) -> Q | None:
    values = [v for v in _values(raw, uid=True) if v]
    if not values:
        return None
    if any(has_wildcard(v) for v in values):
        raise QueryError("a UID key takes no wildcards (list of UID matching)")
    return Q(**{f"{path}__in": values})


def _date_range(path: str, raw: str) -> Q | None:
    if is_universal(raw):
        return None
    try:
        lower, upper = parse_range(raw, parse_da)
    except ValueError_ as exc:
        raise QueryError(str(exc)) from None
    condition = Q()
    if lower is not None:
        condition &= Q(**{f"{path}__gte": lower})
    if upper is not None:
        condition &= Q(**{f"{path}__lte": upper})
    return condition


def _text_date_range(path: str, raw: str) -> Q | None:
    """A DA range on a DA stored as text (``YYYYMMDD`` sorts as the date does)."""
    if is_universal(raw):
        return None
    try:
        lower, upper = parse_range(raw, parse_da)
    except ValueError_ as exc:
        raise QueryError(str(exc)) from None
    condition = Q()
    if lower is not None:
        condition &= Q(**{f"{path}__gte": lower.strftime("%Y%m%d")})
    if upper is not None:
        condition &= Q(**{f"{path}__lte": upper.strftime("%Y%m%d")})
    return condition


def _tm_bounds(raw: str) -> tuple[str | None, str | None]:
    """A TM range as the ``HHMMSS[.F]`` texts it is compared with (a stored TM sorts as the time)."""
    try:
        lower, upper = parse_range(raw, parse_tm)
    except ValueError_ as exc:
        raise QueryError(str(exc)) from None
    return (lower.strftime("%H%M%S.%f") if lower else None), (upper.strftime("%H%M%S.%f") if upper else None)


def _time_range(path: str, raw: str) -> Q | None:
    if is_universal(raw):
        return None
    lower, upper = _tm_bounds(raw)
    condition = Q()
    if lower is not None:
        condition &= Q(**{f"{path}__gte": lower[:6]})
    if upper is not None:
        condition &= Q(**{f"{path}__lte": upper})
    return condition


def _date_time_range(date_path: str, time_path: str, date_raw: str, time_raw: str) -> Q:
    """StudyDate and StudyTime together: one range from the first date at the lower time to the
    last date at the upper time (PS3.4 C.2.2.2.5.1)."""
    try:
        lo_date, hi_date = parse_range(date_raw, parse_da)
    except ValueError_ as exc:
        raise QueryError(str(exc)) from None
    lo_time, hi_time = _tm_bounds(time_raw)
    condition = Q()
    if lo_date is not None:
        after = Q(**{f"{date_path}__gt": lo_date})
        same = Q(**{date_path: lo_date})
        if lo_time is not None:
            same &= Q(**{f"{time_path}__gte": lo_time[:6]})
        condition &= after | same
    elif lo_time is not None:
        condition &= Q(**{f"{time_path}__gte": lo_time[:6]})
    if hi_date is not None:
        before = Q(**{f"{date_path}__lt": hi_date})
        same = Q(**{date_path: hi_date})
        if hi_time is not None:
            same &= Q(**{f"{time_path}__lte": hi_time})
        condition &= before | same
    elif hi_time is not None:
        condition &= Q(**{f"{time_path}__lte": hi_time})
    return condition


def _integer(path: str, raw: str) -> Q | None:
    text = raw.strip()
    if not text:
        return None
    try:
        return Q(**{path: int(text)})
    except ValueError:
        raise QueryError(f"{text[:32]!r} is not an integer (IS)") from None


def _modalities(prefix: str, raw: str) -> Q | None:
    """ModalitiesInStudy: a study matches when one of its series has the modality (or one of
    several, ``CT\\MR`` or ``CT,MR``); wildcards allowed."""
    values = [v.strip() for v in raw.replace("\\", ",").split(",")]
    if any(is_universal(v) for v in values):
        return None
    conditions = Q()
    for v in values:
        series = Series.objects.filter(study=OuterRef(f"{prefix}pk" if prefix else "pk"))
        if has_wildcard(v):
            series = series.filter(modality__dicom_like=wildcard_to_like(v))
        else:
            series = series.filter(modality=v)
        conditions |= Q(Exists(series))
    return conditions


def _key_condition(kind: str, path: str, prefix: str, raw: str) -> Q | None:
    if kind == "modalities":
        return _modalities(prefix, raw)
    if kind == "pn":
        return _string(path, raw, pn=True)
    matcher = {"text": _string, "uid": _uids, "da": _date_range, "da_text": _text_date_range, "tm": _time_range,
               "int": _integer}[kind]
    return matcher(path, raw)


def _conditions(query: Query) -> Q:
    condition = Q()
    keys = dict(query.keys)
    date_time = None
    if "StudyDate" in keys and "StudyTime" in keys and not is_universal(keys["StudyDate"]) \
            and not is_universal(keys["StudyTime"]):
        date_time = (keys.pop("StudyDate"), keys.pop("StudyTime"))
    for keyword, raw in keys.items():
        spec = ATTRIBUTES.get(keyword)
        if spec is None or spec.kind == "count":
            continue
        if _DEPTH[spec.level] > _DEPTH[query.level]:
            raise QueryError(f"{keyword} is not an attribute of the {query.level.lower()} level or above")
        prefix = _PREFIX[(query.level, spec.level)]
        path = prefix + spec.field
        one = _key_condition(spec.kind, path, prefix, raw)
        if one is not None:
            condition &= one
    if date_time is not None:
        prefix = _PREFIX[(query.level, STUDY)]
        condition &= _date_time_range(prefix + "study_date", prefix + "study_time", *date_time)
    if query.study_uid is not None:
        condition &= Q(**{_PREFIX[(query.level, STUDY)] + "study_instance_uid": query.study_uid})
    if query.series_uid is not None:
        condition &= Q(**{_PREFIX[(query.level, SERIES)] + "series_instance_uid": query.series_uid})
    return condition


def _count(model, **link) -> Coalesce:
    counted = model.objects.filter(**link).order_by().values(next(iter(link))).annotate(n=Count("pk")).values("n")
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


def search(query: Query) -> Result:
    """The matches of ``query``, one page of them (``offset``, ``limit``), in index order."""
    if query.level not in LEVELS:
        raise QueryError(f"unknown query level {query.level!r}")
    returned = returned_keywords(query)
    model = _MODEL[query.level]
    rows = model.objects.filter(_conditions(query))
    study_pk = {STUDY: "pk", SERIES: "study_id", IMAGE: "study_id"}[query.level]
    if "NumberOfStudyRelatedSeries" in returned:
        rows = rows.annotate(n_study_series=_count(Series, study=OuterRef(study_pk)))
    if "NumberOfStudyRelatedInstances" in returned:
        rows = rows.annotate(n_study_instances=_count(Instance, study=OuterRef(study_pk)))
    if "NumberOfSeriesRelatedInstances" in returned:
        rows = rows.annotate(n_series_instances=_count(
            Instance, series=OuterRef("pk" if query.level == SERIES else "series_id")))
    paths = {}
    for keyword in returned:
        spec = ATTRIBUTES[keyword]
        paths[keyword] = spec.field if spec.kind == "count" else _PREFIX[(query.level, spec.level)] + spec.field
    ordering = {STUDY: ("pk",), SERIES: ("study_id", "series_number", "pk"),
                IMAGE: ("series_id", "instance_number", "pk")}[query.level]
    study_prefix = _PREFIX[(query.level, STUDY)]
    columns = [*paths.values(), study_prefix + "patient_id", study_prefix + "issuer_of_patient_id"]
    page = list(rows.order_by(*ordering).values_list(*columns)[query.offset:query.offset + query.limit + 1])
    more = len(page) > query.limit
    found = []
    for row in page[:query.limit]:
        values = dict(zip(paths, row[:-2], strict=True))
        values[PATIENT] = (row[-2], row[-1])
        found.append(values)
    return Result(rows=found, more=more, returned=returned)
