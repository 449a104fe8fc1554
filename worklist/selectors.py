"""Read-side queries of the reading worklist (one indexed scan of ``ReadingItem`` per page).

Order: STAT first (``priority_rank``), then longest waiting (``ready_at``), then ``id``.
Pagination is by key (seek method), not OFFSET: a page is "the 50 rows after (rank, ready_at,
id) of the last row seen", so page 2,000 costs what page 1 costs and a refresh of the same URL
keeps the user's place even while new studies arrive above it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from urllib.parse import urlencode

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from pacs.models import Prior, Series, Study
from pacs.services import priors
from project import links
from ris import states
from ris.models import ReportVersion, RequestedProcedure
from worklist import ohif
from worklist.models import REPORT_STATUSES, ReadingClaim, ReadingItem, name_key
from worklist.services import claim_timeout

PAGE_SIZE = 50
STATUS_TO_READ = "TO_READ"
STATUS_ALL = "ALL"
STATUS_FILTERS = (STATUS_TO_READ, STATUS_ALL, *REPORT_STATUSES)
ORDER = ("priority_rank", "ready_at", "id")


@dataclass
class ListFilters:
    """The filter form of the reading worklist, validated.  Unknown values are dropped with a message."""

    modality: str = ""
    priority: str = ""
    status: str = STATUS_TO_READ
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    q: str = ""
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_query(cls, data) -> ListFilters:
        f = cls()
        f.modality = (data.get("modality") or "").strip().upper()[:16]
        priority = (data.get("priority") or "").strip().upper()
        if priority and priority not in states.PRIORITY_RANK:
            f.errors.append(f"unknown priority {priority!r}")
        elif priority:
            f.priority = priority
        status = (data.get("status") or STATUS_TO_READ).strip().upper()
        if status not in STATUS_FILTERS:
            f.errors.append(f"unknown status {status!r}")
        else:
            f.status = status
        for name in ("date_from", "date_to"):
            raw = (data.get(name) or "").strip()
            if raw:
                try:
                    setattr(f, name, dt.date.fromisoformat(raw))
                except ValueError:
                    f.errors.append(f"{name.replace('_', ' ')}: {raw!r} is not a date (YYYY-MM-DD)")
        f.q = (data.get("q") or "").strip()[:64]
        return f

    def as_query(self) -> str:
        pairs = {
            "modality": self.modality, "priority": self.priority,
            "status": "" if self.status == STATUS_TO_READ else self.status,
            "date_from": self.date_from.isoformat() if self.date_from else "",
            "date_to": self.date_to.isoformat() if self.date_to else "", "q": self.q,
        }
        return urlencode({k: v for k, v in pairs.items() if v})


def filtered(filters: ListFilters):
    qs = ReadingItem.objects.all()
    if filters.status == STATUS_TO_READ:
        qs = qs.filter(is_read=False)
    elif filters.status != STATUS_ALL:
        qs = qs.filter(report_status=filters.status)
    if filters.modality:
        qs = qs.filter(modality=filters.modality)
    if filters.priority:
        qs = qs.filter(priority_rank=states.PRIORITY_RANK[filters.priority])
    tz = timezone.get_current_timezone()
    if filters.date_from:
        qs = qs.filter(ready_at__gte=dt.datetime.combine(filters.date_from, dt.time.min, tzinfo=tz))
    if filters.date_to:
        qs = qs.filter(ready_at__lt=dt.datetime.combine(filters.date_to + dt.timedelta(days=1), dt.time.min, tzinfo=tz))
    if filters.q:
        # Free text: accession or patient ID exactly, or the start of the name (family name first).
        text = filters.q
        qs = qs.filter(
            Q(accession_number=text) | Q(patient_id=text) | Q(patient_name_key__startswith=name_key(text))
        )
    return qs


def encode_cursor(item: ReadingItem) -> str:
    return f"{item.priority_rank}.{int(item.ready_at.timestamp() * 1_000_000)}.{item.id}"


def decode_cursor(raw: str) -> tuple[int, dt.datetime, int] | None:
    try:
        rank, micros, pk = (int(x) for x in raw.split("."))
        return rank, dt.datetime.fromtimestamp(micros / 1_000_000, tz=dt.UTC), pk
    except (ValueError, OverflowError, OSError):
        return None


@dataclass
class Page:
    rows: list
    next_cursor: str = ""
    prev_cursor: str = ""
    claims: dict = field(default_factory=dict)


def reading_page(filters: ListFilters, *, after: str = "", before: str = "", page_size: int = PAGE_SIZE) -> Page:
    """One page of the reading worklist with the active claim of each row."""
    qs = filtered(filters)
    cursor_after, cursor_before = decode_cursor(after) if after else None, decode_cursor(before) if before else None
    # Row-value comparison so that PostgreSQL seeks the (…, priority_rank, ready_at, id) index.
    if cursor_before:
        rows = list(
            qs.extra(where=["(priority_rank, ready_at, worklist_readingitem.id) < (%s, %s, %s)"],
                     params=list(cursor_before)).order_by(*(f"-{c}" for c in ORDER))[: page_size + 1]
        )
        has_more_before = len(rows) > page_size
        rows = list(reversed(rows[:page_size]))
        page = Page(rows)
        page.prev_cursor = encode_cursor(rows[0]) if rows and has_more_before else ""
        page.next_cursor = encode_cursor(rows[-1]) if rows else ""
    else:
        if cursor_after:
            qs = qs.extra(where=["(priority_rank, ready_at, worklist_readingitem.id) > (%s, %s, %s)"],
                          params=list(cursor_after))
        rows = list(qs.order_by(*ORDER)[: page_size + 1])
        has_more = len(rows) > page_size
        rows = rows[:page_size]
        page = Page(rows)
        page.next_cursor = encode_cursor(rows[-1]) if rows and has_more else ""
        page.prev_cursor = encode_cursor(rows[0]) if rows and cursor_after else ""
    if rows:
        cutoff = timezone.now() - claim_timeout()
        active = ReadingClaim.objects.filter(
            requested_procedure_id__in=[r.requested_procedure_id for r in rows], released_at__isnull=True,
            last_activity_at__gte=cutoff,
        ).select_related("user")
        page.claims = {c.requested_procedure_id: c for c in active}
    ready = priors.ready_counts(r.requested_procedure_id for r in rows) if rows else {}
    for row in rows:
        row.claim = page.claims.get(row.requested_procedure_id)
        row.priors_ready = ready.get(row.requested_procedure_id, 0)
    return page


_MODALITIES_SKIP_SCAN = """
WITH RECURSIVE m(modality) AS (
    (SELECT modality FROM worklist_readingitem ORDER BY modality LIMIT 1)
    UNION ALL
    SELECT (SELECT r.modality FROM worklist_readingitem r WHERE r.modality > m.modality ORDER BY r.modality LIMIT 1)
    FROM m WHERE m.modality IS NOT NULL
)
SELECT modality FROM m WHERE modality IS NOT NULL LIMIT 50"""


def modalities() -> list[str]:
    """Modalities offered in the filter (the ones on the list).

    A loose index scan (one index probe per distinct value on ``reading_modality_idx``): a plain
    SELECT DISTINCT would read all 100,000 rows on every page view.
    """
    from django.db import connection

    if connection.vendor != "postgresql":
        return sorted(ReadingItem.objects.order_by().values_list("modality", flat=True).distinct()[:50])
    with connection.cursor() as cur:
        cur.execute(_MODALITIES_SKIP_SCAN)
        return [row[0] for row in cur.fetchall()]


def viewer_url(item) -> str:
    """The image viewer link of a study: a site's own viewer from VIEWER_URL_TEMPLATE when set,
    else the built-in viewer (``builtin_viewer_url``).

    Placeholders by DICOM keyword -- {StudyInstanceUID}, {AccessionNumber}, {PatientID} -- or in
    snake case ({study_instance_uid} ...); values are URL-quoted.  A template with an unknown
    placeholder gives no link rather than a wrong one (``project.links``, the same link an
    ORU^R01 carries).
    """
    if settings.VIEWER_URL_TEMPLATE:
        return links.viewer_url(settings.VIEWER_URL_TEMPLATE, study_instance_uid=item.study_instance_uid,
                                accession_number=item.accession_number, patient_id=getattr(item, "patient_id", ""))
    return builtin_viewer_url(item)


def viewer_studies(item) -> list[str]:
    """The Study Instance UIDs (0020,000D) the built-in viewer opens for a reading item: its own
    study when the engine holds it, then its relevant priors that are ready here -- the ones
    ``pacs.services.priors`` chose by the site's rules (PRIORS_MATCH, PRIORS_MAX_YEARS,
    PRIORS_MAX_COUNT; every identifier of the patient, merges included) and holds -- newest first
    by Study Date, at most VIEWER_PRIOR_STUDIES.  Empty when the study itself is not held."""
    if not item.study_instance_uid or not Study.objects.filter(study_instance_uid=item.study_instance_uid).exists():
        return []
    uids = [item.study_instance_uid]
    if settings.VIEWER_PRIOR_STUDIES:
        uids += [uid for uid in priors.ready_study_uids(item.requested_procedure_id, settings.VIEWER_PRIOR_STUDIES)
                 if uid != item.study_instance_uid]
    return uids


def builtin_viewer_url(item) -> str:
    """The built-in viewer (``worklist.ohif``) on the study and its priors held here:
    ``/viewer/viewer?StudyInstanceUIDs=<uid>,<uid>...&initialSeriesInstanceUID=<uid>`` (OHIF's
    basic viewer mode; the viewport opens on the study's first series, by Series Number, not on
    a prior's); "" when the viewer is not installed or the engine holds no images of the study."""
    if not ohif.is_installed(settings.VIEWER_DIR):
        return ""
    uids = viewer_studies(item)
    if not uids:
        return ""
    query = {"StudyInstanceUIDs": ",".join(uids)}
    first = (Series.objects.filter(study__study_instance_uid=uids[0])
             .order_by(F("series_number").asc(nulls_last=True), "pk").values_list("series_instance_uid", flat=True)
             .first())
    if first:
        query["initialSeriesInstanceUID"] = first
    return f"{ohif.MOUNT}viewer?{urlencode(query, safe=',')}"


def time_waiting(ready_at: dt.datetime, now: dt.datetime | None = None) -> str:
    seconds = max(0, int(((now or timezone.now()) - ready_at).total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m"


def priors_of(requested_procedure_id: int) -> list:
    """The relevant priors chosen for a study (``pacs.models.Prior``), newest first, each with
    the latest signed version of the engine's report on it (``report``: a ``ReportVersion`` or
    None): the report of the requested procedure the prior study belongs to, found by the
    study's match or by its Study Instance UID."""
    rows = list(Prior.objects.filter(requested_procedure_id=requested_procedure_id)
                .select_related("source").order_by("-study_date", "-pk"))
    uids = [p.study_instance_uid for p in rows]
    procedure_of = {s: rp for s, rp in Study.objects.filter(study_instance_uid__in=uids, requested_procedure__isnull=False)
                    .values_list("study_instance_uid", "requested_procedure_id")}
    procedure_of.update({s: rp for s, rp in procedures_by_study_uid(uids) if s not in procedure_of})
    signed = {}
    for v in (ReportVersion.objects.filter(report__requested_procedure_id__in=set(procedure_of.values()),
                                           signed_at__isnull=False)
              .select_related("report").order_by("report_id", "version_number")):
        signed[v.report.requested_procedure_id] = v
    for p in rows:
        p.report = signed.get(procedure_of.get(p.study_instance_uid))
        p.prior_procedure_id = procedure_of.get(p.study_instance_uid)
    return rows


def procedures_by_study_uid(uids: list[str]) -> list[tuple[str, int]]:
    """(Study Instance UID, requested procedure key) of the engine's orders for these studies."""
    return list(RequestedProcedure.objects.filter(study_instance_uid__in=uids).values_list("study_instance_uid", "pk"))
