"""The engine as a DICOMweb user agent towards a VNA that takes STOW-RS (a ``VnaDestination`` of
kind ``stow``): the counterpart of ``pacs.qr_scu``, with the same functions and answers, so that
relevant priors and recalls (``pacs.services.priors``) work with such a VNA as with a DICOM one.

- ``find_studies``: QIDO-RS Search for Studies (PS3.18 10.6), ``GET {base}/studies`` with
  PatientID and, when known, IssuerOfPatientID as matching keys (PS3.18 8.3.4) and the return
  keys the C-FIND of ``qr_scu`` asks for as ``includefield``; the answer is DICOM JSON (PS3.18
  F.2).  As there, an answer naming another IssuerOfPatientID is dropped here (a server may not
  match on IssuerOfPatientID), and so is one naming another PatientID (a server that ignored the
  key would otherwise hand over other patients' studies).
- ``find_body_parts``: QIDO-RS Search for Series of each study (``{base}/studies/{uid}/series``)
  with BodyPartExamined (0018,0015), a series attribute (PS3.3 C.7.3.1), on one connection.
- ``move_study``: WADO-RS Retrieve Study (PS3.18 10.4), ``GET {base}/studies/{uid}`` accepting
  ``multipart/related; type="application/dicom"`` with ``transfer-syntax=*`` (PS3.18 8.7.3: the
  instances as the VNA holds them; without it the default is Explicit VR Little Endian, for
  which a VNA decompresses every compressed image), and without the parameter when a server
  refuses it (400 or 406).  The answer is read part by part as it arrives
  (``pacs.lib.multipart``): each part, a PS3.10 file, goes to its own file in the store's
  incoming directory behind the engine's zero preamble and File Meta Information (as the DICOM
  acceptor writes a C-STORE's data set) and its header is read as the C-STORE handler reads it
  (``pacs.dimse.store.read_attributes``).  Only when the whole answer has arrived, its close
  delimiter included, and every part is a DICOM instance of the study asked for, is each stored
  through the one writer of received instances (``pacs.services.images.store_instance``): an
  answer cut short or with a bad part stores nothing and is a ``TransientError`` (retried, as a
  C-MOVE with failed sub-operations is).  Memory holds one chunk of the answer and one header.

Everything about reaching the server (base URL, credentials, TLS, timeouts, which failures are
transient) is ``pacs.dicomweb_http``'s, shared with the STOW-RS sender.  HTTP 404 to a
retrieval is permanent (the VNA does not hold the study); 204 to a search is no match (PS3.18
10.6).  Messages and logs never carry a PatientID or a name.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import requests
from django.conf import settings
from django.db import DatabaseError, InterfaceError
from pydicom.filereader import read_dataset

from pacs import auditing, dicomweb_http, storage
from pacs.dicomweb import media
from pacs.dimse import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, ul
from pacs.dimse.store import read_attributes
from pacs.lib import multipart
from pacs.qr_scu import FoundStudy, count
from pacs.services import completion, images, resends
from pacs.services.routing.sending import PermanentError, TransientError
from project.auditing import events

__all__ = ["RETRIEVE", "FoundStudy", "find_body_parts", "find_studies", "move_study"]

log = logging.getLogger("pacs.qr_dicomweb")

RETRIEVE = "WADO-RS"  # how a fetch is named in a prior's history (qr_scu: C-MOVE)
DICOM_JSON = "application/dicom+json"
# PS3.18 8.7.3: "*" asks for the Transfer Syntax the VNA holds each instance in.
ACCEPT_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_DEFAULT = 'multipart/related; type="application/dicom"'
CHUNK_BYTES = 256 * 1024
HEAD_BYTES = 64 * 1024  # of a data set kept in memory for its header, as the DICOM acceptor does
MAX_FILE_META_BYTES = 64 * 1024
SUFFIX = ".wado"  # files of this module in the incoming directory (swept with the acceptor's)

STUDY_KEYS = ("StudyInstanceUID", "StudyDate", "StudyDescription", "ModalitiesInStudy", "AccessionNumber")


def _values(item: dict, keyword: str) -> list:
    """An attribute's values in a DICOM JSON object (PS3.18 F.2.2), [] when absent or empty."""
    element = item.get(media.tag(keyword)) if isinstance(item, dict) else None
    values = element.get("Value") if isinstance(element, dict) else None
    return values if isinstance(values, list) else []


def _text(item: dict, keyword: str) -> str:
    values = _values(item, keyword)
    return "" if not values or values[0] is None else str(values[0])


MAX_SEARCH_PAGES = 50  # a VNA that keeps saying "more" is asked at most this many times per search


def _more_results(response: requests.Response) -> bool:
    """Whether the answer says that it was cut at the server's maximum number of matches: the
    Warning PS3.18 8.3.4 gives for it ("There are additional results that can be requested")."""
    return "additional results" in response.headers.get("Warning", "").lower()


def _search_page(session: requests.Session, destination, url: str, params: list[tuple[str, str]], *,
                 not_found_is_empty: bool) -> tuple[list[dict], bool]:
    """One QIDO-RS request: the DICOM JSON objects answered and whether more can be requested.
    The status's body is left out of a failure's message: it may repeat the query (a PatientID)."""
    response = dicomweb_http.send(destination, "GET", url, service="QIDO-RS", session=session, params=params,
                                  headers={"Accept": DICOM_JSON})
    with response:
        if response.status_code == 204 or (response.status_code == 404 and not_found_is_empty):
            return [], False
        dicomweb_http.check_status(response, "QIDO-RS", with_body=False)
        more = _more_results(response)
        if response.headers.get("Warning") and not more:
            # PS3.18 8.3.4: e.g. a matching key the server ignored.  Its text is not logged: it
            # may repeat the query.
            log.warning("QIDO-RS answer with a Warning header", extra={"destination": destination.name})
        try:
            answer = response.json()
        except ValueError:
            raise PermanentError(f"QIDO-RS answer from {destination.url} is not DICOM JSON") from None
    if not isinstance(answer, list):
        raise PermanentError(f"QIDO-RS answer from {destination.url} is not a DICOM JSON array")
    return [item for item in answer if isinstance(item, dict)], more


def _search(session: requests.Session, destination, url: str, params: list[tuple[str, str]], *,
            not_found_is_empty: bool = False) -> list[dict]:
    """A QIDO-RS search, every page of it: an answer cut at the server's maximum number of matches
    (its Warning, ``_more_results``) is followed by a request for the rest with ``offset`` (PS3.18
    8.3.4) set to the number of answers given so far, until an answer says no more, brings nothing new
    (a server that ignores ``offset``) or ``MAX_SEARCH_PAGES`` is reached; those two are logged
    and the search ends with what was found."""
    found: list[dict] = []
    seen: set[str] = set()
    given = 0  # answers the server has given so far: the next page's offset
    for _page in range(MAX_SEARCH_PAGES):
        page_params = params + [("offset", str(given))] if given else params
        answer, more = _search_page(session, destination, url, page_params, not_found_is_empty=not_found_is_empty)
        given += len(answer)
        new = [item for item in answer if _identity(item) not in seen]
        seen.update(_identity(item) for item in new)
        found.extend(new)
        if not more:
            return found
        if not new:
            log.warning("QIDO-RS server says more results but its next page brings none new",
                        extra={"destination": destination.name, "answers": len(found)})
            return found
    log.warning("QIDO-RS search stopped after the most pages asked", extra={
        "destination": destination.name, "answers": len(found), "pages": MAX_SEARCH_PAGES})
    return found


def _identity(item: dict) -> str:
    """What names one answer of any level: its UIDs (the DICOM JSON of an answer without them)."""
    uids = [_text(item, k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
    return "|".join(uids) if any(uids) else repr(sorted(item.items()))


def find_studies(destination, patient_id: str, issuer_of_patient_id: str, *,
                 since: dt.date | None = None) -> list[FoundStudy]:
    """QIDO-RS Search for Studies: PatientID (single value matching), when known
    IssuerOfPatientID, and with ``since`` StudyDate ``YYYYMMDD-`` (range matching, PS3.18 8.3.4
    and PS3.4 C.2.2.2.5, as the C-FIND asks); return keys StudyInstanceUID, StudyDate, StudyDescription,
    ModalitiesInStudy, AccessionNumber, NumberOfStudyRelatedInstances (those of
    ``qr_scu.find_studies``; PS3.18 Table 10.6.3-3 lists the count among a study's), with PatientID and
    IssuerOfPatientID to check the answers."""
    params = [("PatientID", patient_id)]
    if issuer_of_patient_id:
        params.append(("IssuerOfPatientID", issuer_of_patient_id))
    if since:
        params.append(("StudyDate", f"{since:%Y%m%d}-"))
    params += [("includefield", k) for k in (*STUDY_KEYS, "NumberOfStudyRelatedInstances", "PatientID",
                                              "IssuerOfPatientID")]
    with requests.Session() as session:
        answers = _search(session, destination, f"{dicomweb_http.base_url(destination)}/studies", params)
    found = []
    for item in answers:
        answered_id = _text(item, "PatientID")
        if answered_id and answered_id != patient_id:
            continue  # a server that did not match on PatientID
        answered_issuer = _text(item, "IssuerOfPatientID")
        if issuer_of_patient_id and answered_issuer and answered_issuer != issuer_of_patient_id:
            continue  # another assigning authority's patient under the same PatientID
        uid = _text(item, "StudyInstanceUID")
        if not storage.is_valid_uid(uid):
            continue
        found.append(FoundStudy(
            uid, patient_id, issuer_of_patient_id, _text(item, "StudyDate"), _text(item, "StudyDescription")[:64],
            "\\".join(str(m) for m in _values(item, "ModalitiesInStudy") if m)[:64],
            _text(item, "AccessionNumber")[:16], count(_values(item, "NumberOfStudyRelatedInstances"))))
    return found


def find_body_parts(destination, study_instance_uids) -> dict[str, frozenset[str]]:
    """QIDO-RS Search for Series, one search per study on one connection, return key
    BodyPartExamined.  Returns the values found per study (studies without any are left out);
    failures as for ``find_studies``; a study the VNA does not know (404) has none."""
    uids = [u for u in study_instance_uids if storage.is_valid_uid(u)]
    found: dict[str, set[str]] = {}
    with requests.Session() as session:
        for uid in uids:
            url = f"{dicomweb_http.base_url(destination)}/studies/{uid}/series"
            for item in _search(session, destination, url, [("includefield", "BodyPartExamined")],
                                not_found_is_empty=True):
                part = _text(item, "BodyPartExamined").strip().upper()
                if part:
                    found.setdefault(uid, set()).add(part[:16])
    return {uid: frozenset(parts) for uid, parts in found.items()}


# ------------------------------------------------------------------------------------ retrieval
class BadPart(Exception):
    """A part of the WADO-RS answer that is not a DICOM instance of the study asked for."""


@dataclass
class _Received:
    path: Path
    attrs: images.InstanceAttributes


def _file_meta(head: bytes) -> tuple[dict, int] | None:
    """The File Meta Information of a PS3.10 file (PS3.10 7.1) from its first bytes: (its
    elements by keyword, where the data set begins), or None when ``head`` is too short yet."""
    if len(head) < 144:
        return None
    try:
        end = storage.data_set_offset(BytesIO(head[:144]))
    except ValueError:
        raise BadPart("not a DICOM PS3.10 file (no DICM prefix and File Meta Information)") from None
    if end - 144 > MAX_FILE_META_BYTES:
        raise BadPart("File Meta Information too long")
    if len(head) < end:
        return None
    try:
        meta = read_dataset(BytesIO(head[132:end]), False, True)
    except Exception as exc:  # noqa: BLE001 - a malformed group: the part is bad
        raise BadPart(f"unreadable File Meta Information: {type(exc).__name__}") from None
    values = {k: str(meta.get(k, "") or "").strip() for k in (
        "MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")}
    return values, end


def _receive_part(part: multipart.Part, study_instance_uid: str) -> _Received:
    """One part to a file in the incoming directory: the engine's preamble and File Meta
    Information (``ul.file_meta``, as the acceptor writes them), then the data set as sent."""
    kind, _ = multipart.media_type(part.content_type or "application/dicom")
    if kind != "application/dicom":
        raise BadPart(f"a part of type {kind or '(none)'}")
    path = storage.incoming_dir() / f"{uuid.uuid4().hex}{SUFFIX}"
    head = bytearray()
    kept = b""  # the data set's first bytes, for its header
    meta = None
    try:
        with open(path, "wb") as fh:
            for chunk in part.chunks():
                if meta is None:
                    head += chunk
                    found = _file_meta(bytes(head[:144 + MAX_FILE_META_BYTES]))
                    if found is None:
                        continue
                    meta, start = found
                    if not all(storage.is_valid_uid(v) for v in meta.values()):
                        raise BadPart("File Meta Information without valid SOP Class, SOP Instance and "
                                      "Transfer Syntax UIDs")
                    fh.write(ul.file_meta(meta["MediaStorageSOPClassUID"], meta["MediaStorageSOPInstanceUID"],
                                          meta["TransferSyntaxUID"], IMPLEMENTATION_CLASS_UID,
                                          IMPLEMENTATION_VERSION_NAME))
                    chunk = bytes(head[start:])
                    head = bytearray()
                if len(kept) < HEAD_BYTES:
                    kept += chunk[:HEAD_BYTES - len(kept)]
                fh.write(chunk)
        if meta is None:
            raise BadPart("a part shorter than a DICOM file's File Meta Information")
        try:
            attrs = read_attributes(path, transfer_syntax_uid=meta["TransferSyntaxUID"], calling_ae_title="",
                                    head=kept)
        except OSError:
            raise  # the file just written cannot be read: the store's trouble, not the part's
        except Exception as exc:  # noqa: BLE001 - an unreadable data set, as the C-STORE handler says
            raise BadPart(f"unreadable data set: {type(exc).__name__}") from None
        if attrs.sop_instance_uid != meta["MediaStorageSOPInstanceUID"] or (
                attrs.sop_class_uid != meta["MediaStorageSOPClassUID"]):
            raise BadPart("the data set's SOP Class / Instance UID differ from its File Meta Information")
        if attrs.study_instance_uid != study_instance_uid:
            raise BadPart("an instance of another study")
        storage.relative_path(attrs.study_instance_uid, attrs.series_instance_uid, attrs.sop_instance_uid)
    except storage.InvalidUID as exc:
        storage.discard(path)
        raise BadPart(str(exc)[:200]) from None
    except BaseException:
        storage.discard(path)
        raise
    return _Received(path, attrs)


def _receive(response: requests.Response, destination, study_instance_uid: str) -> list[_Received]:
    """Every part of the answer in its own file, or none (all removed) and an error."""
    kind, params = multipart.media_type(response.headers.get("Content-Type", ""))
    if kind != "multipart/related" or not params.get("boundary"):
        raise PermanentError(f"WADO-RS answer from {destination.url} is {kind or 'untyped'}, "
                             "not multipart/related with a boundary")
    if params.get("type", "application/dicom").lower() != "application/dicom":
        raise PermanentError(f"WADO-RS answer from {destination.url} has parts of type {params['type']}")
    received: list[_Received] = []
    try:
        for n, part in enumerate(multipart.read_parts(response.iter_content(CHUNK_BYTES), params["boundary"]), 1):
            try:
                received.append(_receive_part(part, study_instance_uid))
            except BadPart as exc:
                raise TransientError(f"WADO-RS answer from {destination.url}: part {n} is not usable: {exc}") \
                    from None
    except BaseException as exc:
        for r in received:
            storage.discard(r.path)
        if isinstance(exc, multipart.Truncated):
            raise TransientError(f"WADO-RS answer from {destination.url} cut short after {len(received)} "
                                 f"instances: {exc}") from None
        if isinstance(exc, multipart.MultipartError):
            raise TransientError(f"WADO-RS answer from {destination.url} is not well-formed: {exc}") from None
        if isinstance(exc, requests.RequestException):
            raise TransientError(f"WADO-RS answer from {destination.url} broken off after {len(received)} "
                                 f"instances: {type(exc).__name__}") from None
        if isinstance(exc, OSError):
            raise TransientError(f"WADO-RS from {destination.url}: cannot write to the store: {exc}") from None
        raise
    return received


def _get_study(session: requests.Session, destination, study_instance_uid: str) -> requests.Response:
    url = f"{dicomweb_http.base_url(destination)}/studies/{study_instance_uid}"
    response = dicomweb_http.send(destination, "GET", url, service="WADO-RS", session=session, stream=True,
                                  headers={"Accept": ACCEPT_AS_STORED})
    if response.status_code in (400, 406):
        # A server that does not take transfer-syntax=* (400: it cannot parse the parameter; 406:
        # it does not support it): the default Transfer Syntax then (PS3.18 8.7.3).
        response.close()
        response = dicomweb_http.send(destination, "GET", url, service="WADO-RS", session=session, stream=True,
                                      headers={"Accept": ACCEPT_DEFAULT})
    return response


def move_study(destination, study_instance_uid: str) -> int:
    """WADO-RS Retrieve Study of one study, every instance stored as a received one; returns the
    number of instances stored (module docstring)."""
    if not storage.is_valid_uid(study_instance_uid):
        raise PermanentError("not a valid Study Instance UID")
    with requests.Session() as session:
        response = _get_study(session, destination, study_instance_uid)
        with response:
            if response.status_code == 404:
                raise PermanentError(f"WADO-RS: {destination.url} does not hold the study (HTTP 404)")
            dicomweb_http.check_status(response, "WADO-RS")
            if response.status_code == 204:
                raise PermanentError(f"WADO-RS: {destination.url} answered no instances (HTTP 204)")
            if response.status_code == 206:
                # Partial content: the VNA could not send every instance.  Nothing is stored from
                # it, so that a prior is not taken as held with instances missing.
                raise TransientError(f"WADO-RS: {destination.url} sent only part of the study (HTTP 206)")
            if response.status_code != 200:
                raise PermanentError(f"WADO-RS HTTP {response.status_code} from {destination.url}")
            received = _receive(response, destination, study_instance_uid)
    if not received:
        raise PermanentError(f"WADO-RS: {destination.url} answered no instances")
    return _store(destination, received)


def _store(destination, received: list[_Received]) -> int:
    """Each received file through the writer of received instances, as the C-STORE handler does;
    an instance it refuses is counted failed, the rest stored; a store or database that fails
    ends the attempt (transient).  The studies stored are on the audit trail."""
    stored, failed, first_failure = 0, 0, ""
    studies: dict[str, list] = {}
    done = 0
    try:
        for item in received:
            done += 1
            attrs = item.attrs
            try:
                result = images.store_instance(attrs, item.path)
            except (storage.InvalidUID, images.InstanceConflict, resends.ResendRejected) as exc:
                storage.discard(item.path)
                failed += 1
                first_failure = first_failure or f"{type(exc).__name__}: {str(exc)[:200]}"
                continue
            except (OSError, DatabaseError, InterfaceError) as exc:  # StorageFull is an OSError
                storage.discard(item.path)
                raise TransientError(f"WADO-RS from {destination.url}: {stored} instances stored, then "
                                     f"{type(exc).__name__}: {str(exc)[:200]}") from exc
            stored += 1
            entry = studies.setdefault(attrs.study_instance_uid, [(attrs.patient_id, attrs.issuer_of_patient_id), 0])
            entry[1] += 1
            if result.mpps_completed:
                try:  # as after a C-STORE: this instance may be the last a COMPLETED MPPS waited for
                    completion.check_study(result.study_id, cause="instance after MPPS COMPLETED")
                except Exception:  # noqa: BLE001 - stored and indexed; the sweep completes the study later
                    log.exception("completion check after WADO-RS failed")
    finally:
        for item in received[done:]:
            storage.discard(item.path)
        if settings.AUDIT_ENABLED and studies:
            auditing.instances_fetched(destination, studies, service="WADO-RS",
                                       outcome=events.MINOR_FAILURE if failed or done < len(received)
                                       else events.SUCCESS)
    log.info("study retrieved by WADO-RS", extra={"destination": destination.name, "instances": stored,
                                                  "failed": failed})
    if failed:
        raise TransientError(f"WADO-RS from {destination.url}: {stored} instances stored, {failed} refused "
                             f"({first_failure})")
    return stored
