"""DICOMweb resources of the engine (DICOM PS3.18), under ``/dicomweb/``.

- QIDO-RS Search (10.6): ``/studies``, ``/studies/{study}/series``, ``/series``,
  ``/studies/{study}/series/{series}/instances``, ``/studies/{study}/instances``, ``/instances``;
  matching by ``pacs.services.index_query`` (one SQL query);
- WADO-RS Retrieve (10.4): study, series, instance (multipart/related; type="application/dicom",
  streamed from the stored files), their ``/metadata`` (application/dicom+json), an instance's
  ``/frames/{list}`` and ``/bulkdata/7FE00010``, and ``/rendered`` (image/jpeg, image/png);
- WADO-URI (9): ``/wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..``.

A retrieval of a study purged here after archiving fetches it back from the VNA
(``pacs.services.recall``) and answers 503 with Retry-After until it is held again; searches
answer from the index and need no files.

Thin: each view checks the grant (``pacs.dicomweb.access``), parses the request, reads the
index and the files (``pacs.dicomweb.files``), records the read on the audit trail
(DICOM Instances Accessed or Query, PS3.15 A.5.3.6 / A.5.3.10) and answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import OperationalError
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import reverse

from pacs import storage
from pacs.dicomweb import files, media
from pacs.dicomweb.access import Grant, dicomweb_view, problem
from pacs.models import Instance
from pacs.services import index_query as iq
from pacs.services import recall
from project import links
from project.auditing import events
from project.auditing import web as web_audit

_CONTROL = {"limit", "offset", "fuzzymatching", "includefield", links.STUDY_LINK_PARAMETER}


def _base(request) -> str:
    """The service's base URL in the URLs it answers with (RetrieveURL, BulkDataURI):
    ``DICOMWEB_BASE_URL`` when set (the public address, behind a proxy), else the request's."""
    if settings.DICOMWEB_BASE_URL:  # checked at start (pacs.E009)
        return settings.DICOMWEB_BASE_URL.rstrip("/")
    return request.build_absolute_uri(reverse("dicomweb:root")).rstrip("/")


def _bad_uids(*uids: str | None) -> JsonResponse | None:
    for uid in uids:
        if uid is not None and not storage.is_valid_uid(uid):
            return problem(400, f"{uid[:80]!r} is not a UID")
    return None


def _refused(grant: Grant, study_uid: str | None) -> JsonResponse | None:
    if not grant.allows(study_uid):
        return problem(403, "this link grants another study")
    return None


# ------------------------------------------------------------------------------------- QIDO-RS
def _parse_search(request, query: iq.Query) -> tuple[iq.Query, list[str]]:
    """Query parameters (PS3.18 8.3.4) into ``query``; the Warning headers to send."""
    warnings = []
    unsupported = []
    for name, values in request.GET.lists():
        if name == "limit" or name == "offset":
            if len(values) != 1 or not values[0].isdigit() or (name == "limit" and int(values[0]) < 1):
                raise iq.QueryError(f"{name} must be a {'positive' if name == 'limit' else 'non-negative'} integer")
            setattr(query, name, int(values[0]))
        elif name == "fuzzymatching":
            if len(values) != 1 or values[0] not in ("true", "false"):
                raise iq.QueryError("fuzzymatching must be true or false")
            if values[0] == "true":
                warnings.append(f'299 {_base(request)}: "The fuzzymatching parameter is not supported. '
                                'Only literal matching has been performed."')
        elif name == "includefield":
            for value in values:
                for item in value.split(","):
                    if item.strip() == "all":
                        query.include_all = True
                    elif item.strip():
                        query.include.add(iq.keyword_of(item))
        elif name in _CONTROL:
            continue
        else:
            keyword = iq.keyword_of(name)
            if len(values) != 1 or keyword in query.keys:
                raise iq.QueryError(f"{keyword} is given more than once")
            if iq.attribute(keyword) is None or iq.attribute(keyword).kind in iq.RETURN_ONLY:
                unsupported.append(keyword)
                continue
            query.keys[keyword] = values[0]
    if unsupported:
        warnings.append(f'299 {_base(request)}: "The following attributes are not supported as matching keys '
                        f'and were ignored: {", ".join(unsupported)}"')
    return query, warnings


class SearchTooLong(Exception):
    """The search ran longer than ``DICOMWEB_QIDO_TIMEOUT_SECONDS``."""


def _run_search(query: iq.Query) -> iq.Result:
    """``iq.search`` bounded in time: on PostgreSQL the statement is cancelled after
    ``DICOMWEB_QIDO_TIMEOUT_SECONDS``, so that a search held up by a lock or a slow plan frees its
    web worker."""
    try:
        return iq.search(query, time_limit_ms=int(settings.DICOMWEB_QIDO_TIMEOUT_SECONDS * 1000))
    except OperationalError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == "57014":  # query_canceled
            raise SearchTooLong from exc
        raise


def _retrieve_url(base: str, row: dict, level: str) -> str:
    url = f"{base}/studies/{row['StudyInstanceUID']}"
    if level in (iq.SERIES, iq.IMAGE):
        url += f"/series/{row['SeriesInstanceUID']}"
    if level == iq.IMAGE:
        url += f"/instances/{row['SOPInstanceUID']}"
    return url


def _criteria(query: iq.Query, level: str, study_uid: str | None, series_uid: str | None, grant: Grant) -> dict:
    """What a search asked, as its Query audit record holds it."""
    return {**query.keys, "level": level, "study": study_uid, "series": series_uid, **grant.audit_detail()}


def _search(request, grant: Grant, level: str, study_uid: str | None = None, series_uid: str | None = None):
    bad = _bad_uids(study_uid, series_uid) or _refused(grant, study_uid)
    if bad is not None:
        return bad
    if not any(r.type in (media.DICOM_JSON, "application/json", "application/*", "*/*")
               for r in media.accepted(request.headers.get("Accept", ""))):
        return problem(406, f"search results are offered as {media.DICOM_JSON} only")
    query = iq.Query(level=level, study_uid=study_uid or grant.study_uid, series_uid=series_uid,
                     limit=settings.DICOMWEB_QIDO_MAX_RESULTS)
    try:
        query, warnings = _parse_search(request, query)
        if query.limit > settings.DICOMWEB_QIDO_MAX_RESULTS:
            query.limit = settings.DICOMWEB_QIDO_MAX_RESULTS
        result = _run_search(query)
    except iq.QueryError as exc:
        return problem(400, str(exc))
    except SearchTooLong:
        # The search was run on the patient data asked for and cancelled: on the audit trail as a
        # Query that failed (PS3.15 A.5.3.10, EventOutcomeIndicator 8), nobody listed.
        web_audit.query(request, patients=[], actor=grant.actor, outcome=events.SERIOUS_FAILURE,
                        criteria=_criteria(query, level, study_uid, series_uid, grant), shown=0)
        # PS3.18 8.6.1.2: 503, the service is unavailable for now; a narrower search may answer.
        response = problem(503, f"the search took longer than {settings.DICOMWEB_QIDO_TIMEOUT_SECONDS:g} s; "
                                "narrow it (more matching keys, a smaller limit) or try again later")
        response["Retry-After"] = "10"
        return response
    if result.more:
        warnings.append(f'299 {_base(request)}: "There are additional results that can be requested."')
    web_audit.query(request, patients=[r[iq.PATIENT_PAIR] for r in result.rows if r[iq.PATIENT_PAIR][0]], actor=grant.actor,
                    criteria=_criteria(query, level, study_uid, series_uid, grant), shown=len(result.rows))
    if not result.rows:
        response = HttpResponse(status=204)  # PS3.18 8.3.4.4.1: no matches, no payload
    else:
        base = _base(request)
        documents = []
        for row in result.rows:
            doc = media.dataset_json({k: row[k] for k in result.returned})
            doc["00081190"] = {"vr": "UR", "Value": [_retrieve_url(base, row, level)]}  # RetrieveURL
            documents.append(dict(sorted(doc.items())))
        response = HttpResponse(b"".join(media.json_array(documents)), content_type=media.DICOM_JSON)
    if warnings:
        response["Warning"] = ", ".join(warnings)
    return response


@dicomweb_view
def search_studies(request, grant):
    return _search(request, grant, iq.STUDY)


@dicomweb_view
def search_series(request, grant, study_uid: str | None = None):
    return _search(request, grant, iq.SERIES, study_uid)


@dicomweb_view
def search_instances(request, grant, study_uid: str | None = None, series_uid: str | None = None):
    return _search(request, grant, iq.IMAGE, study_uid, series_uid)


# ------------------------------------------------------------------------------------- WADO-RS
@dataclass(frozen=True)
class Stored:
    path: Path
    transfer_syntax_uid: str
    study_uid: str
    series_uid: str
    sop_uid: str
    size: int  # bytes, as indexed when the file was stored


def _rows(study_uid: str, series_uid: str | None, sop_uid: str | None) -> list[tuple]:
    rows = Instance.objects.filter(study__study_instance_uid=study_uid)
    if series_uid is not None:
        rows = rows.filter(series__series_instance_uid=series_uid)
    if sop_uid is not None:
        rows = rows.filter(sop_instance_uid=sop_uid)
    return list(rows.order_by("series__series_number", "series_id", "instance_number", "pk").values_list(
        "path", "transfer_syntax_uid", "series__series_instance_uid", "sop_instance_uid", "study__patient_id",
        "study__issuer_of_patient_id", "study__accession_number", "study__purged_at", "size"))


def _recalled(request, grant: Grant, study_uid: str) -> JsonResponse | None:
    """A study purged here after archiving: fetched back from the VNA (``pacs.services.recall``).
    None when it is held again within ``RECALL_WAIT_SECONDS``; else 503 Service Unavailable with
    Retry-After (PS3.18 8.7.3 / RFC 9110 15.6.4) while it is being fetched, or 404 when no archive
    known to hold it can be asked."""
    first = recall.request(study_uid, actor=grant.actor, via="DICOMweb",
                           source_address=web_audit.client_address(request))
    result = recall.wait(study_uid, first, seconds=settings.RECALL_WAIT_SECONDS)
    if result.state == recall.HELD:
        return None
    if result.state == recall.UNAVAILABLE:
        return problem(404, result.reason)
    response = problem(503, f"the study's files were purged here after archiving: {result.reason}; "
                            f"retry after {result.retry_after} seconds")
    response["Retry-After"] = str(result.retry_after)
    return response


def _stored(request, grant: Grant, study_uid: str, series_uid: str | None = None,
            sop_uid: str | None = None, *, resource: str) -> list[Stored] | JsonResponse:
    """The stored instances of a resource (404 when none is held here), the read audited."""
    bad = _bad_uids(study_uid, series_uid, sop_uid) or _refused(grant, study_uid)
    if bad is not None:
        return bad
    rows = _rows(study_uid, series_uid, sop_uid)
    if not rows:
        return problem(404, "no such study, series or instance here")
    if rows[0][7] is not None:
        refusal = _recalled(request, grant, study_uid)
        if refusal is not None:
            return refusal
        rows = _rows(study_uid, series_uid, sop_uid)
        if not rows or rows[0][7] is not None:
            return problem(404, "no such study, series or instance here")
    patient_id, issuer, accession = rows[0][4], rows[0][5], rows[0][6]
    objects = [{"type": "study", "id": study_uid}] + ([{"type": "accession", "id": accession}] if accession else [])
    web_audit.read(request, events.INSTANCES_ACCESSED, patients=[(patient_id, issuer)] if patient_id else [],
                   objects=objects, actor=grant.actor,
                   detail={"resource": resource, "instances": len(rows), **grant.audit_detail()})
    return [Stored(storage.instance_path(r[0]), r[1], study_uid, r[2], r[3], r[8]) for r in rows]


def _dicom_acceptable(request) -> tuple[bool, str]:
    """Whether the answer as stored (multipart/related; type="application/dicom") is acceptable,
    and the transfer syntax asked (``*`` or "": as stored)."""
    for r in media.accepted(request.headers.get("Accept", "")):
        if r.type in ("*/*", "multipart/*"):
            return True, ""
        if r.type == "multipart/related" and r.part_type in ("", "*/*", "application/dicom"):
            return True, r.transfer_syntax
    return False, ""


@dicomweb_view
def retrieve(request, grant, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None):
    acceptable, syntax = _dicom_acceptable(request)
    if not acceptable:
        return problem(406, 'instances are offered as multipart/related; type="application/dicom"')
    level = "instance" if sop_uid else "series" if series_uid else "study"
    stored = _stored(request, grant, study_uid, series_uid, sop_uid, resource=level)
    if isinstance(stored, JsonResponse):
        return stored
    if syntax not in ("", "*") and any(s.transfer_syntax_uid != syntax for s in stored):
        return problem(406, f"the instances are stored in another transfer syntax than {syntax[:64]}; "
                            "ask for transfer-syntax=* to have them as stored")
    mark = media.boundary()
    # The sizes indexed with the files (their stat() when stored): no system call per file
    # before the first byte; a file that is not that size when read ends the answer short.
    sized = [(f"application/dicom; transfer-syntax={s.transfer_syntax_uid}", s.path, s.size) for s in stored]
    parts = ((content_type, files.sized_chunks(path, size)) for content_type, path, size in sized)
    response = StreamingHttpResponse(media.multipart(parts, mark), content_type=media.multipart_type(
        "application/dicom", mark))
    response["Content-Length"] = str(media.multipart_length(((t, n) for t, _, n in sized), mark))
    return response


def _bulk_data_uri(base: str, s: Stored) -> str:
    return f"{base}/studies/{s.study_uid}/series/{s.series_uid}/instances/{s.sop_uid}/bulkdata/{files.PIXEL_DATA_TAG}"


@dicomweb_view
def metadata(request, grant, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None):
    if not any(r.type in (media.DICOM_JSON, "application/json", "application/*", "*/*")
               for r in media.accepted(request.headers.get("Accept", ""))):
        return problem(406, f"metadata is offered as {media.DICOM_JSON} only")
    stored = _stored(request, grant, study_uid, series_uid, sop_uid, resource="metadata")
    if isinstance(stored, JsonResponse):
        return stored
    base = _base(request)
    documents = (files.metadata_json(s.path, _bulk_data_uri(base, s)) for s in stored)
    return StreamingHttpResponse(media.json_array(documents), content_type=media.DICOM_JSON)


def _frame_numbers(text: str) -> list[int] | None:
    try:
        numbers = [int(n) for n in text.split(",")]
    except ValueError:
        return None
    return numbers if numbers and all(n >= 1 for n in numbers) else None


@dicomweb_view
def frames(request, grant, study_uid: str, series_uid: str, sop_uid: str, frame_list: str):
    numbers = _frame_numbers(frame_list)
    if numbers is None:
        return problem(400, "frames are a comma-separated list of frame numbers from 1")
    ranges = media.accepted(request.headers.get("Accept", ""))
    stored = _stored(request, grant, study_uid, series_uid, sop_uid, resource="frames")
    if isinstance(stored, JsonResponse):
        return stored
    s = stored[0]
    try:
        layout = files.pixel_layout(s.path)
        mark = media.boundary()
        if layout.transfer_syntax_uid in files.NATIVE_LITTLE_ENDIAN:
            if not any(r.type in ("*/*", "multipart/*") or (
                    r.type == "multipart/related" and r.part_type in ("", "*/*", "application/octet-stream")
                    and r.transfer_syntax in ("", "*", "1.2.840.10008.1.2.1")) for r in ranges):
                return problem(406, 'native frames are offered as multipart/related; type="application/octet-stream"')
            chunks = [files.native_frame(s.path, layout, n) for n in numbers]
            part = "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
        else:
            image_type = files.FRAME_MEDIA_TYPES.get(layout.transfer_syntax_uid, "")
            if not any(r.type in ("*/*", "multipart/*") or (
                    r.type == "multipart/related" and r.part_type == "*/*") or (
                    r.type == "multipart/related" and (
                        (r.part_type == "application/octet-stream"
                         and r.transfer_syntax in ("*", layout.transfer_syntax_uid))
                        or (image_type and r.part_type == image_type))) for r in ranges):
                return problem(406, f"the frames are compressed ({layout.transfer_syntax_uid}); ask for "
                                    'multipart/related; type="application/octet-stream"; transfer-syntax=*')
            chunks = list(files.encapsulated_frames(s.path, numbers))
            part = f"{image_type or 'application/octet-stream'}; transfer-syntax={layout.transfer_syntax_uid}"
    except files.NotRenderable as exc:
        return problem(404, str(exc))
    body = media.multipart(((part, [c]) for c in chunks), mark)
    return StreamingHttpResponse(body, content_type=media.multipart_type(part.split(";")[0], mark))


@dicomweb_view
def bulkdata(request, grant, study_uid: str, series_uid: str, sop_uid: str, tag: str):
    if tag.upper() != files.PIXEL_DATA_TAG:
        return problem(404, "bulk data is offered for Pixel Data (7FE00010) only")
    stored = _stored(request, grant, study_uid, series_uid, sop_uid, resource="bulkdata")
    if isinstance(stored, JsonResponse):
        return stored
    s = stored[0]
    try:
        layout = files.pixel_layout(s.path)
    except files.NotRenderable as exc:
        return problem(404, str(exc))
    if layout.transfer_syntax_uid not in files.NATIVE_LITTLE_ENDIAN:
        return problem(406, "the pixel data is compressed: retrieve its frames")
    mark = media.boundary()
    whole = [files.native_frame(s.path, layout, n) for n in range(1, layout.number_of_frames + 1)]
    part = "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    return StreamingHttpResponse(media.multipart([(part, whole)], mark),
                                 content_type=media.multipart_type("application/octet-stream", mark))


def _rendered_type(request, explicit: str = "") -> str:
    """The image type asked for (image/jpeg unless image/png is preferred); "" for neither."""
    if explicit:
        return explicit if explicit in ("image/jpeg", "image/png") else ""
    for r in media.accepted(request.headers.get("Accept", "")):
        if r.type in ("image/jpeg", "image/png"):
            return r.type
        if r.type in ("*/*", "image/*"):
            return "image/jpeg"
    return ""


def _viewport(text: str) -> tuple[int, int] | None | str:
    if not text:
        return None
    parts = text.split(",")
    try:
        width, height = int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        return "bad"
    return (width, height) if 0 < width <= 4096 and 0 < height <= 4096 else "bad"


def _render_response(request, grant, study_uid, series_uid, sop_uid, *, frame: int, media_type: str,
                     viewport, quality: int, resource: str):
    stored = _stored(request, grant, study_uid, series_uid, sop_uid, resource=resource)
    if isinstance(stored, JsonResponse):
        return stored
    try:
        image = files.render(stored[0].path, frame=frame, media_type=media_type, viewport=viewport, quality=quality)
    except files.NotRenderable as exc:
        return problem(404 if "does not exist" in str(exc) or "no pixel" in str(exc) else 406, str(exc))
    return HttpResponse(image, content_type=media_type)


@dicomweb_view
def rendered(request, grant, study_uid: str, series_uid: str, sop_uid: str, frame_list: str | None = None):
    media_type = _rendered_type(request)
    if not media_type:
        return problem(406, "rendered frames are offered as image/jpeg or image/png")
    frame = 1
    if frame_list is not None:
        numbers = _frame_numbers(frame_list)
        if numbers is None or len(numbers) != 1:
            return problem(400, "rendered takes one frame number")
        frame = numbers[0]
    viewport = _viewport(request.GET.get("viewport", ""))
    quality = request.GET.get("quality", "90")
    if viewport == "bad" or not quality.isdigit() or not 1 <= int(quality) <= 100:
        return problem(400, "viewport is width,height (1 to 4096); quality 1 to 100")
    return _render_response(request, grant, study_uid, series_uid, sop_uid, frame=frame, media_type=media_type,
                            viewport=viewport, quality=int(quality), resource="rendered")


@dicomweb_view
def root(request, grant):
    return problem(404, "DICOMweb resources are under studies/, series/, instances/ and wado")


# ------------------------------------------------------------------------------------ WADO-URI
@dicomweb_view
def wado_uri(request, grant):
    """PS3.18 9: one instance, as application/dicom or rendered (image/jpeg, the default)."""
    q = request.GET
    if q.get("requestType") != "WADO":
        return problem(400, "requestType must be WADO")
    study_uid, series_uid, sop_uid = q.get("studyUID"), q.get("seriesUID"), q.get("objectUID")
    if not (study_uid and series_uid and sop_uid):
        return problem(400, "studyUID, seriesUID and objectUID are required")
    # contentType may list several types (PS3.18 9.1.2.1.6): the first one offered here is used.
    offered = ("application/dicom", "image/jpeg", "image/png")
    asked = [t.split(";")[0].strip() for t in (q.get("contentType") or "image/jpeg").split(",")]
    content_type = next((t for t in asked if t in offered), asked[0])
    if content_type == "application/dicom":
        syntax = q.get("transferSyntax", "")
        stored = _stored(request, grant, study_uid, series_uid, sop_uid, resource="wado-uri")
        if isinstance(stored, JsonResponse):
            return stored
        if syntax and syntax != stored[0].transfer_syntax_uid:
            return problem(406, "the instance is offered in the transfer syntax it is stored in only")
        response = StreamingHttpResponse(files.chunks(stored[0].path), content_type="application/dicom")
        response["Content-Disposition"] = f'attachment; filename="{sop_uid}.dcm"'
        return response
    media_type = _rendered_type(request, content_type)
    if not media_type:
        return problem(406, "contentType must be application/dicom, image/jpeg or image/png")
    frame = q.get("frameNumber", "1")
    rows, columns = q.get("rows", ""), q.get("columns", "")
    quality = q.get("imageQuality", "90")
    if not frame.isdigit() or int(frame) < 1 or not quality.isdigit() or not 1 <= int(quality) <= 100 \
            or (rows and not rows.isdigit()) or (columns and not columns.isdigit()):
        return problem(400, "frameNumber, rows, columns and imageQuality are positive integers")
    viewport = None
    if rows or columns:
        viewport = (min(int(columns or rows), 4096) or 1, min(int(rows or columns), 4096) or 1)
    return _render_response(request, grant, study_uid, series_uid, sop_uid, frame=int(frame), media_type=media_type,
                            viewport=viewport, quality=int(quality), resource="wado-uri")
