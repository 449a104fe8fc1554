"""Modality Worklist matching: a C-FIND identifier -> one database query (PS3.4 C.2.2.2, K.6.1.2).

Every matching rule becomes a condition of the one SQL query over
``ris.ScheduledProcedureStep`` (joined to its requested procedure, order, visit and
patient); nothing is loaded into Python to be filtered.

- single value matching (C.2.2.2.1), trailing spaces insignificant;
- universal matching (C.2.2.2.3): an empty key, or one made only of ``*``;
- wildcard matching (C.2.2.2.4): ``*`` and ``?`` in every string key (names, IDs,
  AE titles, codes) -> SQL ``LIKE``; PatientName case-insensitive when
  MWL_PATIENT_NAME_CASE_INSENSITIVE is on (``UPPER(name) LIKE UPPER(pattern)``);
- range matching (C.2.2.2.5): ``A-B``, ``-B``, ``A-`` on DA and TM keys; when a query
  carries both ScheduledProcedureStepStartDate and ...StartTime they form one combined
  date-time range (C.2.2.2.5.1): lower = first date at the lower time, upper = last date
  at the upper time.  A time without a date matches the time of day on any date;
- list of UID matching (C.2.2.2.2): ``uid1\\uid2`` -> ``IN``;
- sequence matching (C.2.2.2.6): a sequence key holds at most one item, whose keys are
  matched as above; a sequence with no item (or an empty item) matches universally and
  returns every attribute of the sequence.

An identifier that breaks these forms raises ``IdentifierError`` (answered 0xA900).
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta

from django.conf import settings
from django.db.models import Exists, OuterRef, Q, QuerySet, Subquery
from pydicom.datadict import dictionary_VR, tag_for_keyword

import pacs.lib.lookups  # noqa: F401 - registers dicom_like and upper
from pacs.lib.dicom_values import (
    ValueError_,
    has_wildcard,
    is_universal,
    parse_da,
    parse_range,
    parse_tm,
)
from pacs.services.index_query import string_condition as _string_condition
from ris import states
from ris.models import PatientIdentifier, ScheduledProcedureStep
from ris.models.core import retired_by_merge


class IdentifierError(Exception):
    """The identifier does not fit the MWL information model (status 0xA900)."""


@dataclass(frozen=True)
class Key:
    """How one attribute is matched and returned: ``path`` is the ORM path from the step
    (None: returned empty, never matched); ``kind`` the matching form."""

    path: str | None
    kind: str = "text"  # text | pn | uid | da | int | decimal | patient_id | issuer | sps_date | sps_time | empty


@dataclass(frozen=True)
class SequenceKey:
    """A sequence attribute whose single item has the keys in ``keys``.  ``present`` is
    the path whose emptiness means "no item" (code sequences); None: always one item."""

    keys: dict
    present: str | None = None
    empty: bool = False  # always returned with no item (e.g. ReferencedStudySequence)


P = "requested_procedure__order__patient__"
O = "requested_procedure__order__"  # noqa: E741 - O for order, as P, V and R
V = "requested_procedure__order__visit__"
R = "requested_procedure__"
PATIENT_ID = "_patient_id"
ISSUER_OF_PATIENT_ID = "_issuer_of_patient_id"


def _code_keys(prefix: str) -> dict:
    return {
        "CodeValue": Key(prefix + "value"),
        "CodingSchemeDesignator": Key(prefix + "scheme"),
        "CodeMeaning": Key(prefix + "meaning"),
    }


# ScheduledProcedureStepSequence (0040,0100) item, PS3.4 Table K.6-1.
SPS_KEYS: dict = {
    "ScheduledStationAETitle": Key("scheduled_station_ae_title"),
    "ScheduledProcedureStepStartDate": Key("scheduled_start", "sps_date"),
    "ScheduledProcedureStepStartTime": Key("scheduled_start", "sps_time"),
    "Modality": Key("modality"),
    "ScheduledPerformingPhysicianName": Key("scheduled_performing_physician_name", "pn"),
    "ScheduledProcedureStepDescription": Key("scheduled_procedure_step_description"),
    "ScheduledProtocolCodeSequence": SequenceKey(_code_keys("protocol_code_"), present="protocol_code_value"),
    "ScheduledStationName": Key("scheduled_station_name"),
    "ScheduledProcedureStepLocation": Key("scheduled_procedure_step_location"),
    "ScheduledProcedureStepID": Key("scheduled_procedure_step_id"),
    "ScheduledProcedureStepStatus": Key("status"),
    "PreMedication": Key(None, "empty"),
    "RequestedContrastAgent": Key(None, "empty"),
}

# The top level of an MWL item (PS3.4 Table K.6-1; matching PS3.4 C.2.2.2; docs/dicom-conformance.md 5.2).
TOP_KEYS: dict = {
    "PatientName": Key(P + "patient_name", "pn"),
    "PatientID": Key(PATIENT_ID, "patient_id"),
    "IssuerOfPatientID": Key(ISSUER_OF_PATIENT_ID, "issuer"),
    "PatientBirthDate": Key(P + "patient_birth_date", "da"),
    "PatientSex": Key(P + "patient_sex"),
    "PatientWeight": Key(P + "patient_weight", "decimal"),
    "MedicalAlerts": Key(P + "medical_alerts"),
    "Allergies": Key(P + "allergies"),
    "PregnancyStatus": Key(P + "pregnancy_status", "int"),
    "AdmissionID": Key(V + "visit_number"),
    "CurrentPatientLocation": Key(V + "assigned_location"),
    "ReferringPhysicianName": Key(O + "referring_physician_name", "pn"),
    "RequestingPhysician": Key(O + "ordering_provider", "pn"),
    "PlacerOrderNumberImagingServiceRequest": Key(O + "placer_order_number"),
    "FillerOrderNumberImagingServiceRequest": Key(O + "filler_order_number"),
    "ReasonForTheRequestedProcedure": Key(O + "reason_for_study"),
    "AccessionNumber": Key(R + "accession_number"),
    "RequestedProcedureID": Key(R + "requested_procedure_id"),
    "RequestedProcedureDescription": Key(R + "requested_procedure_description"),
    "RequestedProcedurePriority": Key(R + "requested_procedure_priority"),
    "StudyInstanceUID": Key(R + "study_instance_uid", "uid"),
    "RequestedProcedureCodeSequence": SequenceKey(_code_keys(R + "procedure_code_"), present=R + "procedure_code_value"),
    "ReferencedStudySequence": SequenceKey({}, empty=True),
    "ReferencedPatientSequence": SequenceKey({}, empty=True),
    "ScheduledProcedureStepSequence": SequenceKey(SPS_KEYS),
}


@dataclass
class Matches:
    """What one identifier asks: the conditions, and the shape of the answer."""

    conditions: list = field(default_factory=list)  # Q objects, AND-ed
    patient_id_filter: Q | None = None  # on PatientIdentifier
    step_status_given: bool = False
    station_ae_given: bool = False
    charset_requested: bool = False  # SpecificCharacterSet was in the identifier
    paths: set = field(default_factory=set)  # ORM paths the answer needs
    returned: list = field(default_factory=list)  # (keyword, tag, VR, sub | None) in identifier order


def _text_value(value, *, ui: bool = False) -> list[str]:
    """The value(s) of a string key: a MultiValue (``A\\B``) gives several, matched as OR."""
    if value is None:
        return [""]
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        values = [str(v) for v in value] or [""]
    else:
        values = [str(value)]
    # NUL pads only a UI value at its end (PS3.5 6.2); anywhere else it is in no character
    # repertoire (PS3.5 6.1), so no stored value can match it: the identifier is refused.
    if any("\x00" in (v.rstrip("\x00") if ui else v) for v in values):
        raise IdentifierError("a key holds a NUL character (0x00), which no string VR allows")
    return values


def _zone():
    return zoneinfo.ZoneInfo(settings.TIME_ZONE)


def _combined_range(date_value: str, time_value: str) -> Q | None:
    """ScheduledProcedureStepStartDate + ...StartTime on ``scheduled_start`` (C.2.2.2.5)."""
    tz = _zone()
    date_range = None if is_universal(date_value) else parse_range(date_value, parse_da)
    time_range = None if is_universal(time_value) else parse_range(time_value, parse_tm)
    if date_range is None and time_range is None:
        return None
    if date_range is None:
        # Time of day on any date, in the department's zone.
        lo, hi = time_range
        lo = lo or time.min
        hi = hi or time.max
        if lo <= hi:
            return Q(scheduled_start__time__gte=lo, scheduled_start__time__lte=hi)
        return Q(scheduled_start__time__gte=lo) | Q(scheduled_start__time__lte=hi)  # across midnight
    d_lo, d_hi = date_range
    t_lo, t_hi = time_range if time_range else (None, None)
    condition = Q()
    if d_lo is not None:
        condition &= Q(scheduled_start__gte=datetime.combine(d_lo, t_lo or time.min, tz))
    if d_hi is not None:
        if t_hi is None:
            condition &= Q(scheduled_start__lt=datetime.combine(d_hi + timedelta(days=1), time.min, tz))
        else:
            condition &= Q(scheduled_start__lte=datetime.combine(d_hi, t_hi, tz))
    return condition


def _element_value(elem):
    try:
        return elem.value
    except Exception as exc:  # noqa: BLE001 - undecodable value in the identifier
        raise IdentifierError(f"{elem.tag} cannot be decoded: {exc}") from None


def _match_keys(ds, table: dict, matches: Matches, returned: list, *, in_sps: bool) -> None:
    date_value = time_value = None
    for elem in ds:
        tag = elem.tag
        if elem.keyword == "SpecificCharacterSet":
            matches.charset_requested = True
            continue
        if tag.element == 0 or tag.is_private:
            continue
        keyword = elem.keyword
        spec = table.get(keyword)
        value = _element_value(elem)
        if elem.VR == "SQ":
            items = list(value or [])
            if len(items) > 1:
                raise IdentifierError(f"{keyword}: sequence matching takes one item, got {len(items)}")
            if not isinstance(spec, SequenceKey):
                returned.append((keyword, tag, "SQ", None))  # not supported: returned empty
                continue
            sub: list = []
            if spec.empty:
                returned.append((keyword, tag, "SQ", sub))
                continue
            if spec.present:
                matches.paths.add(spec.present)
            if not items or len(items[0]) == 0:
                # Universal: every attribute of the sequence (C.2.2.2.6).
                for sub_keyword, sub_spec in spec.keys.items():
                    _want(sub_keyword, sub_spec, matches, sub)
            else:
                _match_keys(items[0], spec.keys, matches, sub, in_sps=spec.keys is SPS_KEYS)
            returned.append((keyword, tag, "SQ", sub))
            continue
        if isinstance(spec, SequenceKey):
            raise IdentifierError(f"{keyword} must be a sequence")
        returned.append((keyword, tag, elem.VR, None))
        if spec is None or spec.path is None:
            continue  # unsupported key: returned empty, matched universally
        matches.paths.add(spec.path)
        text = "" if value is None else value
        try:
            _condition(keyword, spec, text, matches)
        except ValueError_ as exc:
            raise IdentifierError(f"{keyword}: {exc}") from None
        if spec.kind == "sps_date":
            date_value = str(text)
        elif spec.kind == "sps_time":
            time_value = str(text)
    if in_sps and (date_value is not None or time_value is not None):
        try:
            condition = _combined_range(date_value or "", time_value or "")
        except ValueError_ as exc:
            raise IdentifierError(f"ScheduledProcedureStepStartDate/Time: {exc}") from None
        if condition is not None:
            matches.conditions.append(condition)


def _want(keyword: str, spec, matches: Matches, returned: list) -> None:
    """Return ``keyword`` (from a universal sequence) without matching on it."""
    tag = tag_for_keyword(keyword)
    vr = dictionary_VR(tag)
    if isinstance(spec, SequenceKey):
        sub: list = []
        if spec.present:
            matches.paths.add(spec.present)
        for sub_keyword, sub_spec in spec.keys.items():
            _want(sub_keyword, sub_spec, matches, sub)
        returned.append((keyword, tag, "SQ", sub))
        return
    if spec.path:
        matches.paths.add(spec.path)
    returned.append((keyword, tag, vr, None))


def _condition(keyword: str, spec: Key, value, matches: Matches) -> None:
    kind = spec.kind
    if kind in ("sps_date", "sps_time"):
        return  # combined after the whole item is read
    if kind == "text":
        values = _text_value(value)
        if keyword == "ScheduledProcedureStepStatus" and not all(is_universal(v) for v in values):
            matches.step_status_given = True
        if keyword == "ScheduledStationAETitle" and not all(is_universal(v) for v in values):
            matches.station_ae_given = True
        condition = _string_condition(spec.path, values)
    elif kind == "pn":
        ci = keyword == "PatientName" and settings.MWL_PATIENT_NAME_CASE_INSENSITIVE
        condition = _string_condition(spec.path, _text_value(value), case_insensitive=ci, pn=True)
    elif kind == "uid":
        uids = [v.strip().rstrip("\x00") for v in _text_value(value, ui=True) if v.strip()]
        if not uids:
            return
        if any(has_wildcard(u) for u in uids):
            if all(is_universal(u) for u in uids):
                return
            raise IdentifierError(f"{keyword}: no wildcards in UIDs (C.2.2.2.2)")
        condition = Q(**{f"{spec.path}__in": uids})
    elif kind == "da":
        text = str(value)
        if is_universal(text):
            return
        lo, hi = parse_range(text, parse_da)
        condition = Q()
        if lo is not None:
            condition &= Q(**{f"{spec.path}__gte": lo})
        if hi is not None:
            condition &= Q(**{f"{spec.path}__lte": hi})
    elif kind in ("int", "decimal"):
        text = str(value).strip()
        if not text:
            return
        try:
            number = int(text) if kind == "int" else text
        except ValueError:
            raise IdentifierError(f"{keyword}: not a number: {text!r}") from None
        condition = Q(**{spec.path: number})
    elif kind in ("patient_id", "issuer"):
        id_field = "id_number" if kind == "patient_id" else "assigning_authority"
        sub = _string_condition(id_field, _text_value(value))
        if sub is not None:
            matches.patient_id_filter = sub if matches.patient_id_filter is None else matches.patient_id_filter & sub
        return
    else:
        return
    if condition is not None:
        matches.conditions.append(condition)


def read_identifier(identifier) -> Matches:
    """The matching conditions and the answer's shape of a C-FIND identifier (a pydicom Dataset)."""
    matches = Matches()
    try:
        _match_keys(identifier, TOP_KEYS, matches, matches.returned, in_sps=False)
    except IdentifierError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything unreadable in the identifier
        raise IdentifierError(f"identifier cannot be read: {exc}") from None
    return matches


def _identifier_subquery(matches: Matches) -> QuerySet:
    """The patient's identifiers that may answer PatientID: not one retired by an A40 merge
    still in force (its steps now answer under the survivor's ID), matching the query's
    PatientID / IssuerOfPatientID; the oldest first."""
    identifiers = PatientIdentifier.objects.filter(patient=OuterRef(P.rstrip("_"))).exclude(retired_by_merge())
    if matches.patient_id_filter is not None:
        identifiers = identifiers.filter(matches.patient_id_filter)
    return identifiers.order_by("pk")


def build_queryset(matches: Matches, *, station_ae_title: str | None = None) -> QuerySet:
    """The one query answering ``matches``: rows (dicts of the needed paths), earliest first.

    ``station_ae_title``: restrict to steps for that station when the query did not name
    one (MWL_FILTER_BY_CALLING_AE).  Steps CANCELED, DISCONTINUED or COMPLETED are left out
    unless the query asks for a ScheduledProcedureStepStatus.
    """
    qs = ScheduledProcedureStep.objects.all()
    for condition in matches.conditions:
        qs = qs.filter(condition)
    if not matches.step_status_given:
        qs = qs.exclude(status__in=states.SPS_HIDDEN_FROM_MWL)
    if station_ae_title and not matches.station_ae_given:
        qs = qs.filter(scheduled_station_ae_title=station_ae_title)
    paths = set(matches.paths)
    needs_identifier = PATIENT_ID in paths or ISSUER_OF_PATIENT_ID in paths or matches.patient_id_filter is not None
    if needs_identifier:
        identifiers = _identifier_subquery(matches)
        if matches.patient_id_filter is not None:
            qs = qs.filter(Exists(identifiers))
        qs = qs.annotate(
            **{
                PATIENT_ID: Subquery(identifiers.values("id_number")[:1]),
                ISSUER_OF_PATIENT_ID: Subquery(identifiers.values("assigning_authority")[:1]),
            }
        )
        paths |= {PATIENT_ID, ISSUER_OF_PATIENT_ID}
    return qs.order_by("scheduled_start", "pk").values("pk", *sorted(paths))
