"""Reading worklist pages: the list, the study (editor or read-only), templates.

Thin: each view parses the request, calls ``worklist.services`` / ``ris.services.reports`` /
``worklist.selectors`` and renders.  Every view declares its roles (``project.access``).
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from django import forms
from django.conf import settings
from django.contrib import messages
from django.http import FileResponse, Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from project import csp
from project.access import ADMINISTRATOR, RADIOLOGIST, RESIDENT, TECHNOLOGIST, has_role, roles
from project.auditing import events
from project.auditing import web as web_audit
from ris.errors import DomainError
from ris.models import Report, ReportTemplate
from ris.services import reports
from worklist import ohif, selectors, services
from worklist.models import ReadingItem, SavedFilter

EVERY_ROLE = (RADIOLOGIST, RESIDENT, TECHNOLOGIST, ADMINISTRATOR)
READERS = (RADIOLOGIST, RESIDENT)
REFRESH_SECONDS = 30


@roles(*EVERY_ROLE)
@require_GET
def reading_list(request):
    """The reading worklist.  ``?partial=1`` answers the table body only (the self-refresh)."""
    filters = selectors.ListFilters.from_query(request.GET)
    page = selectors.reading_page(filters, after=request.GET.get("after", ""), before=request.GET.get("before", ""))
    now = timezone.now()
    for row in page.rows:
        row.waiting = selectors.time_waiting(row.ready_at, now)
    context = {
        "filters": filters, "page": page, "refresh_seconds": REFRESH_SECONDS,
        "filter_query": filters.as_query(), "can_read": has_role(request.user, *READERS),
        "is_admin": has_role(request.user, ADMINISTRATOR),
    }
    # Query (PS3.15 A.5.3.10): the search as asked and the patients of the rows shown.
    web_audit.query(request, patients=[(r.patient_id, r.issuer_of_patient_id) for r in page.rows],
                   criteria={**_criteria(filters), "after": request.GET.get("after", ""),
                             "before": request.GET.get("before", "")}, shown=len(page.rows))
    if request.GET.get("partial"):
        return render(request, "worklist/_rows.html", context)
    context.update({
        "modalities": selectors.modalities(), "priorities": [p for p, _ in selectors.states.PRIORITY_CHOICES],
        "statuses": selectors.STATUS_FILTERS,
        "saved_filters": SavedFilter.objects.filter(user=request.user),
    })
    return render(request, "worklist/list.html", context)


def _criteria(filters: selectors.ListFilters) -> dict:
    return {"modality": filters.modality, "priority": filters.priority, "status": filters.status,
            "date_from": filters.date_from.isoformat() if filters.date_from else "",
            "date_to": filters.date_to.isoformat() if filters.date_to else "", "q": filters.q}


def audit_item_read(request, item: ReadingItem, **kwargs) -> None:
    """Procedure Record R (PS3.15 A.5.3.15): the study's procedure and report were shown."""
    web_audit.read(request, events.PROCEDURE_RECORD, patients=[(item.patient_id, item.issuer_of_patient_id)],
                  objects=[{"type": "accession", "id": item.accession_number},
                           {"type": "study", "id": item.study_instance_uid}], **kwargs)


@roles(*READERS)
@require_POST
def save_filter(request):
    filters = selectors.ListFilters.from_query(request.POST)
    try:
        services.save_filter(request.user, request.POST.get("name", ""), filters.as_query())
    except DomainError as exc:
        messages.error(request, str(exc))
    return redirect(f"{reverse('worklist:list')}?{filters.as_query()}")


@roles(*READERS)
@require_POST
def delete_filter(request, filter_id: int):
    services.delete_filter(request.user, filter_id)
    return redirect("worklist:list")


def _study_context(request, item: ReadingItem, claim, editable: bool, draft=None):
    report = Report.objects.filter(requested_procedure_id=item.requested_procedure_id).first()
    return {
        "item": item, "claim": claim, "editable": editable, "draft": draft, "report": report,
        "versions": reports.history(item.requested_procedure_id),
        "priors": selectors.priors_of(item.requested_procedure_id),
        "viewer_url": selectors.viewer_url(item),
        "is_radiologist": has_role(request.user, RADIOLOGIST),
        "is_admin": has_role(request.user, ADMINISTRATOR),
        "waiting": selectors.time_waiting(item.ready_at),
        "now_local": timezone.localtime().strftime("%Y-%m-%dT%H:%M"),
    }


@roles(*EVERY_ROLE)
@require_GET
def study(request, requested_procedure_id: int):
    """Open a study read-only.  A GET never claims (a link or an image tag on another site must not
    take a study away from the worklist, RFC 9110 9.2.1: GET is safe); the reader who holds the
    claim gets the editor, a reader facing an unclaimed study the "Start reading" button (``claim``)."""
    item = get_object_or_404(ReadingItem, requested_procedure_id=requested_procedure_id)
    claim, editable, draft = services.active_claim(requested_procedure_id), False, None
    can_read = has_role(request.user, *READERS)
    if can_read and claim is not None and claim.user_id == request.user.pk:
        editable = True
        draft = reports.open_draft(requested_procedure_id, request.user)
    context = _study_context(request, item, claim, editable, draft)
    context["can_claim"] = can_read and claim is None
    audit_item_read(request, item)
    return render(request, "worklist/study.html", context)


@roles(*READERS)
@require_POST
def claim(request, requested_procedure_id: int):
    """The "Start reading" button: claim the study (a POST with the CSRF token), then show it with the editor,
    or read-only with the holder's name when another reader was first."""
    get_object_or_404(ReadingItem, requested_procedure_id=requested_procedure_id)
    result = services.claim_study(requested_procedure_id, request.user)
    if result.won:
        reports.open_draft(requested_procedure_id, request.user)
    return redirect("worklist:study", requested_procedure_id=requested_procedure_id)


@roles(*READERS)
@require_POST
def autosave(request, requested_procedure_id: int):
    """Autosave of the editor (JSON): keeps the claim alive."""
    if not services.touch_claim(requested_procedure_id, request.user):
        return JsonResponse({"saved": False, "error": "you no longer hold this study (claim released or expired)"},
                            status=409)
    try:
        version = reports.save_draft(
            requested_procedure_id, request.user, findings=request.POST.get("findings"),
            impression=request.POST.get("impression"), addendum=request.POST.get("addendum"),
        )
    except DomainError as exc:
        return JsonResponse({"saved": False, "error": str(exc)}, status=409)
    return JsonResponse({"saved": True, "version": version.version_number,
                         "saved_at": timezone.localtime(version.updated_at).strftime("%H:%M:%S")})


def _parse_local_datetime(raw: str) -> dt.datetime | None:
    raw = (raw or "").strip()
    if not raw:
        return None
    value = dt.datetime.fromisoformat(raw)
    return timezone.make_aware(value) if timezone.is_naive(value) else value


@roles(*READERS)
@require_POST
def sign(request, requested_procedure_id: int):
    kind = request.POST.get("kind", "").upper()
    try:
        version = reports.sign(
            requested_procedure_id, request.user, kind, findings=request.POST.get("findings"),
            impression=request.POST.get("impression"), addendum=request.POST.get("addendum"),
            critical_result=request.POST.get("critical_result") == "on",
            critical_communicated_to=request.POST.get("critical_communicated_to", ""),
            critical_communicated_at=_parse_local_datetime(request.POST.get("critical_communicated_at", "")),
            confirm_cancelled=request.POST.get("confirm_cancelled") == "on",
        )
    except ValueError:
        messages.error(request, "critical result: the time is not a date and time")
    except DomainError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Signed {version.kind.lower()} (version {version.version_number}).")
        return redirect("worklist:list")
    return redirect("worklist:study", requested_procedure_id=requested_procedure_id)


@roles(RADIOLOGIST, RESIDENT, ADMINISTRATOR)
@require_POST
def release(request, requested_procedure_id: int):
    """The holder releases the study; an administrator may force the release (``force=1``)."""
    force = request.POST.get("force") == "1"
    try:
        released = services.release_claim(requested_procedure_id, request.user, force=force)
    except DomainError as exc:
        messages.error(request, str(exc))
        return redirect("worklist:study", requested_procedure_id=requested_procedure_id)
    messages.info(request, "Claim released." if released else "There was no claim of yours to release.")
    return redirect("worklist:list")


# --- Report templates (administrators) ----------------------------------------------------------

class ReportTemplateForm(forms.ModelForm):
    class Meta:
        model = ReportTemplate
        fields = ["name", "procedure_code_value", "modality", "findings", "impression", "active"]
        widgets = {"findings": forms.Textarea(attrs={"rows": 8}), "impression": forms.Textarea(attrs={"rows": 4})}


@roles(ADMINISTRATOR)
@require_GET
def template_list(request):
    return render(request, "worklist/templates.html", {"templates": ReportTemplate.objects.all()})


@roles(ADMINISTRATOR)
@require_http_methods(["GET", "POST"])
def template_edit(request, template_id: int | None = None):
    instance = get_object_or_404(ReportTemplate, pk=template_id) if template_id else None
    form = ReportTemplateForm(request.POST or None, instance=instance)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, "Template saved.")
        return redirect("worklist:templates")
    return render(request, "worklist/template_form.html", {"form": form, "instance": instance})


# --- The built-in image viewer (worklist.ohif) ------------------------------------------------
_VIEWER_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css", ".html": "text/html",
                 ".json": "application/json", ".wasm": "application/wasm", ".svg": "image/svg+xml",
                 ".png": "image/png", ".ico": "image/x-icon", ".woff2": "font/woff2", ".woff": "font/woff",
                 ".ttf": "font/ttf", ".xml": "application/xml", ".onnx": "application/octet-stream"}
#: Files whose name carries their content hash (``app.bundle.0f6159c501addfe9.js``) never change.
_HASHED_NAME = re.compile(r"[.-][0-9a-f]{16,}\.")


def _viewer_file(root: Path, path: str) -> Path | None:
    """The installed viewer file at ``path`` (None: none such, or outside the viewer's directory,
    or a dot file such as the install marker)."""
    if not path or any(part.startswith(".") for part in path.split("/")):
        return None
    candidate = (root / path).resolve()
    if not candidate.is_relative_to(root.resolve()) or not candidate.is_file():
        return None
    return candidate


@roles(*EVERY_ROLE)
@require_GET
def viewer(request, path: str = ""):
    """The built-in viewer under ``/viewer/``: its files, its ``app-config.js`` (the engine's
    DICOMweb as data source, ``worklist.ohif.app_config``), and for every other path its page
    (OHIF routes in the browser: ``/viewer/viewer?StudyInstanceUIDs=...``).  Under the viewer's
    own Content-Security-Policy (``project.csp.VIEWER_POLICY``).  The images themselves come
    through ``/dicomweb/``, which checks and audits every access."""
    if not ohif.is_installed(settings.VIEWER_DIR):
        raise Http404("The built-in viewer is not installed (manage.py install_viewer).")
    root = ohif.installed_dir(settings.VIEWER_DIR)
    if path == ohif.CONFIG_FILE:
        dicomweb_root = request.build_absolute_uri(reverse("dicomweb:root")).rstrip("/")
        response = HttpResponse(ohif.app_config(dicomweb_root), content_type="text/javascript; charset=utf-8")
        response["Cache-Control"] = "no-store"
    else:
        found = _viewer_file(root, path)
        if found is None and Path(path).suffix:
            raise Http404("No such file of the viewer.")
        found = found or root / "index.html"
        response = FileResponse(open(found, "rb"), content_type=_VIEWER_TYPES.get(found.suffix, "application/octet-stream"))
        immutable = found.name != "index.html" and _HASHED_NAME.search(found.name)
        response["Cache-Control"] = "private, max-age=31536000, immutable" if immutable else "private, no-cache"
    response[csp.HEADER] = csp.VIEWER_POLICY
    return response
