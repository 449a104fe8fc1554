"""Searching the audit trail: the audit page's queries (the page itself is monitoring.audit_views).

A search takes :class:`Criteria` (what a privacy officer can ask: a patient, a user or other
actor, an AE title, an event, an outcome, a period) and gives the records newest first.  A patient
is found through the indexed :class:`audit.models.AuditPatient` rows (HL7 PID-3 / DICOM
PatientID with its issuer), never by scanning the records' JSON.  "Who saw this patient"
(:func:`who_saw`) is the same search by patient over a period, reduced to the actors.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass

from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from audit.models import AuditPatient, AuditRecord
from project.auditing import events

# "Who saw this patient" looks back this far unless told otherwise.
WHO_SAW_DEFAULT_DAYS = 30


class CriteriaError(ValueError):
    """A search field that cannot be understood (the message names the field)."""


@dataclass(frozen=True)
class Criteria:
    """One search of the audit page; empty fields do not restrict.  ``date_from`` / ``date_to``
    are local calendar days, both included."""

    patient_id: str = ""
    issuer: str = ""
    actor: str = ""
    ae_title: str = ""
    event_id: str = ""
    outcome: int | None = None
    date_from: dt.date | None = None
    date_to: dt.date | None = None

    @classmethod
    def from_query(cls, query) -> Criteria:
        """From a request's GET parameters (a QueryDict or dict); CriteriaError for a bad value."""
        text = {name: str(query.get(name, "") or "").strip()
                for name in ("patient_id", "issuer", "actor", "ae_title", "event_id", "outcome", "date_from",
                             "date_to")}
        if text["event_id"] and text["event_id"] not in events.EVENT_IDS:
            raise CriteriaError("event_id: not an event this engine records")
        outcome = None
        if text["outcome"]:
            try:
                outcome = int(text["outcome"])
            except ValueError:
                outcome = -1
            if outcome not in events.OUTCOMES:
                raise CriteriaError("outcome: one of 0, 4, 8, 12")
        dates = {}
        for name in ("date_from", "date_to"):
            if text[name]:
                try:
                    dates[name] = dt.date.fromisoformat(text[name])
                except ValueError:
                    raise CriteriaError(f"{name}: a date as YYYY-MM-DD") from None
        if dates.get("date_from") and dates.get("date_to") and dates["date_from"] > dates["date_to"]:
            raise CriteriaError("date_from: after date_to")
        if text["issuer"] and not text["patient_id"]:
            raise CriteriaError("issuer: only with a patient ID")
        return cls(patient_id=text["patient_id"], issuer=text["issuer"], actor=text["actor"],
                   ae_title=text["ae_title"], event_id=text["event_id"], outcome=outcome,
                   date_from=dates.get("date_from"), date_to=dates.get("date_to"))

    def as_detail(self) -> dict:
        """The criteria as the AUDIT_LOG_USED record's ``detail`` stores them (only those given)."""
        return {name: (value.isoformat() if isinstance(value, dt.date) else value)
                for name, value in asdict(self).items() if value not in ("", None)}

    @property
    def empty(self) -> bool:
        return not self.as_detail()


def _day_start(day: dt.date) -> dt.datetime:
    return timezone.make_aware(dt.datetime.combine(day, dt.time.min))


def search(criteria: Criteria) -> QuerySet[AuditRecord]:
    """The records that match, newest first (then highest id first, for a stable page order)."""
    records = AuditRecord.records.all()
    if criteria.patient_id:
        names = AuditPatient.objects.filter(record=OuterRef("pk"), patient_id=criteria.patient_id)
        if criteria.issuer:
            names = names.filter(issuer=criteria.issuer)
        records = records.filter(Exists(names))
    if criteria.actor:
        records = records.filter(actor=criteria.actor)
    if criteria.ae_title:
        # A DICOM peer is the actor (calling AE title) or the destination (called AE title).
        records = records.filter(Q(actor_kind=events.DICOM, actor=criteria.ae_title)
                                 | Q(destination=criteria.ae_title))
    if criteria.event_id:
        records = records.filter(event_id=criteria.event_id)
    if criteria.outcome is not None:
        records = records.filter(outcome=criteria.outcome)
    if criteria.date_from:
        records = records.filter(occurred_at__gte=_day_start(criteria.date_from))
    if criteria.date_to:
        records = records.filter(occurred_at__lt=_day_start(criteria.date_to + dt.timedelta(days=1)))
    return records.order_by("-occurred_at", "-id")


@dataclass(frozen=True)
class Sighting:
    """One actor's look at or change of a patient's data: who, when, from where, what."""

    record_id: int
    occurred_at: dt.datetime
    actor: str
    actor_kind: str
    source_address: str
    event: str
    action: str
    outcome: int
    what: str


def who_saw(patient_id: str, issuer: str = "", *, start: dt.datetime | None = None,
            end: dt.datetime | None = None) -> list[Sighting]:
    """Every record naming the patient between ``start`` (default WHO_SAW_DEFAULT_DAYS ago) and
    ``end`` (default now), newest first: each actor who read (R) or changed (C, U, D) the
    patient's data, or had it sent (E).  The records of the audit trail's own use are not about
    the patient and name none."""
    if not patient_id:
        raise CriteriaError("patient_id: required")
    end = end or timezone.now()
    start = start or end - dt.timedelta(days=WHO_SAW_DEFAULT_DAYS)
    names = AuditPatient.objects.filter(record=OuterRef("pk"), patient_id=patient_id)
    if issuer:
        names = names.filter(issuer=issuer)
    rows = (AuditRecord.records.filter(Exists(names), occurred_at__gte=start, occurred_at__lte=end)
            .order_by("-occurred_at", "-id"))
    return [Sighting(record_id=r.id, occurred_at=r.occurred_at, actor=r.actor, actor_kind=r.actor_kind,
                     source_address=r.source_address, event=event_meaning(r.event_id, r.event_type),
                     action=events.ACTIONS.get(r.action, r.action), outcome=r.outcome, what=describe_objects(r.objects))
            for r in rows]


def event_meaning(event_id: str, event_type: str = "") -> str:
    event = events.EVENT_IDS.get(event_id)
    text = event.meaning if event else event_id
    if event_type:
        kind = events.EVENT_TYPES.get(event_type)
        text = f"{text}: {kind.meaning if kind else event_type}"
    return text


def describe_objects(objects: list) -> str:
    """The participant objects other than patients, as "study 1.2.3, order A100"."""
    return ", ".join(f"{o.get('type')} {o.get('id')}" for o in objects or ()
                     if isinstance(o, dict) and o.get("type") != "patient")


CSV_COLUMNS = ("id", "occurred_at", "event_id", "event", "event_type", "action", "outcome", "actor", "actor_kind",
               "source_address", "destination", "patients", "objects", "detail", "seq", "record_hash")


# A cell that a spreadsheet would run as a formula (OWASP "CSV injection"): a failed login's
# attempted user name is typed by anyone, so such a cell gets a leading apostrophe.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_START) else value


def csv_row(record: AuditRecord) -> list[str]:
    """One record as a row of the CSV export (columns CSV_COLUMNS); JSON for the structured fields."""
    patients = ";".join(f"{o.get('id')}^^^{o.get('issuer') or ''}" if o.get("issuer") else str(o.get("id"))
                        for o in record.objects or () if isinstance(o, dict) and o.get("type") == "patient")
    return [_cell(v) for v in (str(record.id), record.occurred_at.isoformat(), record.event_id, event_meaning(record.event_id),
            record.event_type, record.action, str(record.outcome), record.actor, record.actor_kind,
            record.source_address, record.destination, patients,
            json.dumps([o for o in record.objects or () if not (isinstance(o, dict) and o.get("type") == "patient")],
                       sort_keys=True, ensure_ascii=False),
            json.dumps(record.detail or {}, sort_keys=True, ensure_ascii=False),
            "" if record.seq is None else str(record.seq), record.record_hash)]
