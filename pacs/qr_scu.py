"""The engine as a Query/Retrieve SCU towards a DICOM VNA (PS3.4 Annex C): Study Root C-FIND at
the STUDY level (C.4.1) to find a patient's studies, at the SERIES level for their
BodyPartExamined (relevant priors by body part), and C-MOVE (C.4.2) to have a study sent to
the engine's own AE (``DICOM_AE_TITLE``; the VNA must know it as a move destination).  Used by
``pacs.services.priors`` inside a Celery task; one association per call, never shared.

A ``dicoms://`` destination is reached over TLS only, its certificate verified as for routing
(``pacs.scu.tls_context``).  Failures are ``TransientError`` (no association, a rejected association, a
timeout, out of resources 0xA7xx, a C-MOVE with failed sub-operations) or ``PermanentError``
(move destination unknown 0xA801, identifier refused 0xA900, unable to process 0xCxxx, the SOP
class not accepted).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.conf import settings
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from pacs.scu import tls_context, where
from pacs.services.routing.sending import PermanentError, TransientError

PENDING = frozenset({0xFF00, 0xFF01})
RETRIEVE = "C-MOVE"  # how a fetch is named in a prior's history (qr_dicomweb: WADO-RS)


@dataclass(frozen=True)
class FoundStudy:
    """One C-FIND answer (Study Root, STUDY level)."""

    study_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str
    study_date: str  # DA as answered, may be empty
    study_description: str
    modalities_in_study: str  # backslash-separated
    accession_number: str
    number_of_instances: int | None = None  # NumberOfStudyRelatedInstances, None when not answered


MAX_COUNT = 2**31 - 1  # an IS holds up to 12 digits (PS3.5 6.2); no study has more instances than this


def count(value) -> int | None:
    """An IS count as answered (pydicom's IS, a DICOM JSON number or string), or None when it
    is missing, not a non-negative integer, or beyond ``MAX_COUNT`` (not a real count; it would
    not fit the column the prior keeps it in)."""
    if isinstance(value, (list, tuple)):
        value = value[0] if len(value) == 1 else None
    try:
        n = int(str(value).strip()) if value is not None and str(value).strip() else None
    except ValueError:
        return None
    return n if n is not None and 0 <= n <= MAX_COUNT else None


def _associate(destination, model):
    ae = AE(ae_title=settings.DICOM_AE_TITLE)
    ae.acse_timeout = settings.DICOM_ACSE_TIMEOUT
    ae.dimse_timeout = settings.DICOM_DIMSE_TIMEOUT
    ae.network_timeout = settings.DICOM_NETWORK_TIMEOUT
    ae.add_requested_context(model, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    context = tls_context(destination)
    assoc = ae.associate(destination.host, int(destination.port), ae_title=destination.ae_title,
                         tls_args=(context, destination.host) if context else None)
    if assoc.is_rejected:  # retried: a VNA being reconfigured may accept the engine later
        raise TransientError(f"association rejected by {where(destination)}")
    if not assoc.is_established:
        raise TransientError(f"no association with {where(destination)}")
    if not assoc.accepted_contexts:
        assoc.release()
        raise PermanentError(f"{where(destination)} does not accept {model.name}")
    return assoc


def find_studies(destination, patient_id: str, issuer_of_patient_id: str, *,
                 since: dt.date | None = None) -> list[FoundStudy]:
    """C-FIND Study Root, QueryRetrieveLevel STUDY, PatientID (single value matching), when
    known IssuerOfPatientID, and with ``since`` StudyDate ``YYYYMMDD-`` (range matching, PS3.4
    C.2.2.2.5: the studies of that day or later); return keys StudyInstanceUID, StudyDate, StudyDescription,
    ModalitiesInStudy, AccessionNumber and NumberOfStudyRelatedInstances (PS3.4 C.6.2.1; C.3.4,
    an optional key the VNA may leave unanswered: then whether the engine holds the whole study is
    not known)."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = patient_id
    query.IssuerOfPatientID = issuer_of_patient_id
    for keyword in ("StudyInstanceUID", "StudyDescription", "ModalitiesInStudy", "AccessionNumber",
                    "NumberOfStudyRelatedInstances"):
        setattr(query, keyword, "")
    query.StudyDate = f"{since:%Y%m%d}-" if since else ""
    assoc = _associate(destination, StudyRootQueryRetrieveInformationModelFind)
    found, final = [], None
    try:
        for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if not status:  # no response within the DIMSE timeout, or the association was lost
                raise TransientError(f"no C-FIND response from {where(destination)}")
            final = status.Status
            if final in PENDING and identifier is not None:
                answered_issuer = str(identifier.get("IssuerOfPatientID", "") or "")
                if issuer_of_patient_id and answered_issuer and answered_issuer != issuer_of_patient_id:
                    continue  # another assigning authority's patient under the same PatientID
                modalities = identifier.get("ModalitiesInStudy", "")
                if not isinstance(modalities, str):
                    modalities = "\\".join(str(m) for m in (modalities or []))
                found.append(FoundStudy(
                    str(identifier.get("StudyInstanceUID", "")), patient_id, issuer_of_patient_id,
                    str(identifier.get("StudyDate", "") or ""), str(identifier.get("StudyDescription", "") or "")[:64],
                    modalities[:64], str(identifier.get("AccessionNumber", "") or "")[:16],
                    count(identifier.get("NumberOfStudyRelatedInstances"))))
    finally:
        if assoc.is_established:
            assoc.release()
    if final not in (0x0000, None) and final not in PENDING:
        error = TransientError if 0xA700 <= final <= 0xA7FF or final == 0xC000 else PermanentError
        raise error(f"C-FIND status 0x{final:04X} from {where(destination)}")
    return [f for f in found if f.study_instance_uid]


def find_body_parts(destination, study_instance_uids) -> dict[str, frozenset[str]]:
    """C-FIND Study Root, QueryRetrieveLevel SERIES, one query per study (StudyInstanceUID single
    value matching) on one association; return key BodyPartExamined (0018,0015), a series
    attribute (PS3.3 C.7.3.1).  Returns the values found per study (studies without any are left
    out); failures as for ``find_studies``."""
    uids = [u for u in study_instance_uids if u]
    if not uids:
        return {}
    assoc = _associate(destination, StudyRootQueryRetrieveInformationModelFind)
    found: dict[str, set[str]] = {}
    try:
        for uid in uids:
            query = Dataset()
            query.QueryRetrieveLevel = "SERIES"
            query.StudyInstanceUID = uid
            query.SeriesInstanceUID = ""
            query.BodyPartExamined = ""
            final = None
            for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                if not status:
                    raise TransientError(f"no C-FIND response from {where(destination)}")
                final = status.Status
                if final in PENDING and identifier is not None:
                    part = str(identifier.get("BodyPartExamined", "") or "").strip().upper()
                    if part:
                        found.setdefault(uid, set()).add(part[:16])
            if final not in (0x0000, None) and final not in PENDING:
                error = TransientError if 0xA700 <= final <= 0xA7FF or final == 0xC000 else PermanentError
                raise error(f"C-FIND (SERIES) status 0x{final:04X} from {where(destination)}")
    finally:
        if assoc.is_established:
            assoc.release()
    return {uid: frozenset(parts) for uid, parts in found.items()}


def move_study(destination, study_instance_uid: str) -> int:
    """C-MOVE Study Root, STUDY level, of one study to ``DICOM_AE_TITLE``; returns the number of
    completed sub-operations.  The VNA sends the images to the engine's C-STORE SCP, which stores
    each before answering (so they are held when the final response comes)."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_instance_uid
    assoc = _associate(destination, StudyRootQueryRetrieveInformationModelMove)
    final, completed, failed = None, 0, 0
    try:
        for status, _identifier in assoc.send_c_move(query, settings.DICOM_AE_TITLE,
                                                     StudyRootQueryRetrieveInformationModelMove):
            if not status:
                raise TransientError(f"no C-MOVE response from {where(destination)}")
            final = status.Status
            completed = int(status.get("NumberOfCompletedSuboperations", completed) or 0)
            failed = int(status.get("NumberOfFailedSuboperations", failed) or 0)
    finally:
        if assoc.is_established:
            assoc.release()
    if final == 0x0000 and not failed:
        return completed
    if final == 0xA801:
        raise PermanentError(f"C-MOVE refused by {where(destination)}: move destination {settings.DICOM_AE_TITLE} "
                             "unknown (0xA801): the VNA must know the engine's AE")
    if final == 0xA900:
        raise PermanentError(f"C-MOVE refused by {where(destination)}: identifier does not match (0xA900)")
    if final is not None and 0xC000 <= final <= 0xCFFF:
        # Unable to process; Orthanc answers so when the move destination is not one of its modalities.
        raise PermanentError(f"C-MOVE refused by {where(destination)}: status 0x{final:04X} (unable to process; "
                             f"does the VNA know {settings.DICOM_AE_TITLE} as a move destination?)")
    raise TransientError(f"C-MOVE status 0x{(final or 0):04X} from {where(destination)} "
                         f"({completed} sent, {failed} failed)")
