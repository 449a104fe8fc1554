"""What the DICOM side of the engine puts on the audit trail (DICOM PS3.15 A.5.3), in one place.

The DIMSE handlers, the association policy, the acceptor and VNA routing call these functions;
each turns what happened into one :mod:`audit.trail` record:

- an MWL or Query/Retrieve C-FIND answered: *Query* (A.5.3.10), the calling AE and its address,
  the called AE, the matching keys asked and the patients returned; written by the audit writer
  thread (``record_soon``) after the last response, so the answer never waits for it;
- a C-MOVE or C-GET served: *DICOM Instances Transferred* (A.5.3.7), action R, the requesting AE,
  the destination AE, the studies sent (instances per study) and their patients;
- instances received by C-STORE: *DICOM Instances Transferred* (A.5.3.7), action C, one record
  per association and study (not per instance: C-STORE's speed), at the association's end;
- MPPS N-CREATE / N-SET: *Procedure Record* (A.5.3.15), action C / U;
- a study committed by a VNA: *DICOM Instances Transferred*, action R (the sender's side of
  A.5.3.7), with the destination; written in the transaction that marks the transfer committed;
- a VNA asked for a patient's studies (relevant priors, C-FIND as SCU, or QIDO-RS of a DICOMweb
  VNA): *Query* (A.5.3.10), the engine as actor, the VNA as destination, the identifiers asked,
  the number of answers;
- a study fetched from a DICOMweb VNA by WADO-RS (a prior, a recall): *DICOM Instances
  Transferred* (A.5.3.7), action C (the engine imported them), as a C-STORE received is; the
  VNA named as the other party;
- an association refused (unknown AE, unexpected address, missing certificate) or a TLS handshake
  failed: *Security Alert* (A.5.3.11), Node Authentication, outcome 8 (serious failure).

Only identifiers are recorded (patient ID and issuer, Study Instance UID); nothing here is logged.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from django.conf import settings
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from audit import trail
from pacs.models.transfers import KIND_STOW
from project.auditing import events

MWL_FIND_SOP_CLASS = "1.2.840.10008.5.1.4.31"
MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"
STUDY_ROOT_FIND_SOP_CLASS = "1.2.840.10008.5.1.4.1.2.2.1"


def _value(value):
    """A DICOM element value as JSON: text, a number, a list of those, or nested key dicts."""
    if isinstance(value, Sequence):
        return [query_keys(item) for item in value]
    if isinstance(value, (list, tuple, MultiValue)):
        return [_value(v) for v in value]
    if isinstance(value, (int, float)) or value is None:
        return value
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def query_keys(identifier: Dataset) -> dict:
    """The matching keys of a C-FIND identifier (PS3.4 C.2.2.2): each element with a value, by
    keyword; a sequence with its items' matching keys.  Return keys (empty) are not what was
    asked, so they are left out; an empty sequence is a return key too."""
    keys: dict = {}
    for element in identifier:
        if element.keyword == "SpecificCharacterSet":
            continue
        value = element.value
        if element.VR == "SQ":
            items = [query_keys(item) for item in value]
            if any(items):
                keys[element.keyword or str(element.tag)] = items
            continue
        if value in (None, "", b"") or (isinstance(value, (list, tuple)) and not value):
            continue
        keys[element.keyword or str(element.tag)] = _value(value)
    return keys


def _addresses(assoc) -> tuple[str, str]:
    requestor = assoc.requestor
    return (requestor.ae_title or "").strip(), requestor.address or ""


def _called(assoc) -> str:
    return getattr(getattr(assoc, "server", None), "ae_title", "") or ""


def mwl_query(assoc, identifier: Dataset, rows: Iterable[dict], *, patient_id_path: str, issuer_path: str,
              outcome: int = events.SUCCESS) -> None:
    """A Modality Worklist C-FIND answered (PS3.15 A.5.3.10): the querying AE (UserID = its AE
    title, A.5.2.3), the AE queried, what was asked (ParticipantObjectID = the SOP Class UID; the
    keys from which the export writes ParticipantObjectQuery) and the patients of the answers."""
    calling, address = _addresses(assoc)
    patients = []
    answers = 0
    for row in rows:
        answers += 1
        patient_id = row.get(patient_id_path)
        if patient_id:
            pair = (patient_id, row.get(issuer_path) or "")
            if pair not in patients:
                patients.append(pair)
    trail.record_soon(
        events.QUERY, action=events.EXECUTE, actor=calling or "(no AE title)", actor_kind=events.DICOM,
        outcome=outcome, source_address=address, destination=_called(assoc), patients=patients,
        objects=[{"type": "query", "id": MWL_FIND_SOP_CLASS, "detail": {"keys": query_keys(identifier)}}],
        detail={"answers": answers},
    )


def query(assoc, identifier: Dataset, patients: list[tuple[str, str]], *, sop_class_uid: str, answers: int,
          outcome: int = events.SUCCESS) -> None:
    """A Query/Retrieve C-FIND answered (PS3.15 A.5.3.10), recorded as the worklist query is:
    the querying AE, the AE queried, the SOP class and keys asked, the patients answered."""
    calling, address = _addresses(assoc)
    trail.record_soon(
        events.QUERY, action=events.EXECUTE, actor=calling or "(no AE title)", actor_kind=events.DICOM,
        outcome=outcome, source_address=address, destination=_called(assoc), patients=list(patients),
        objects=[{"type": "query", "id": str(sop_class_uid), "detail": {"keys": query_keys(identifier)}}],
        detail={"answers": answers},
    )


def instances_retrieved(assoc, identifier: Dataset | None, studies: dict, *, sop_class_uid: str, destination: str,
                        failed: int, outcome: int = events.SUCCESS) -> None:
    """A C-MOVE or C-GET served (PS3.15 A.5.3.7 DICOM Instances Transferred, the sender's side:
    action R): one record per retrieval, naming the requesting AE, the destination AE, the
    studies sent with their instance counts and their patients; a refused retrieval is recorded
    with the keys it asked for and no study."""
    calling, address = _addresses(assoc)
    patients: list = []
    objects = []
    for study_uid, (patient, count) in studies.items():
        if patient[0] and tuple(patient) not in patients:
            patients.append(tuple(patient))
        objects.append({"type": "study", "id": study_uid, "detail": {"instances": count}})
    if not objects:
        keys = query_keys(identifier) if identifier is not None else {}
        objects.append({"type": "query", "id": str(sop_class_uid), "detail": {"keys": keys}})
    trail.record_soon(
        events.INSTANCES_TRANSFERRED, action=events.READ, actor=calling or "(no AE title)", actor_kind=events.DICOM,
        outcome=outcome, source_address=address, destination=destination[:255], patients=patients, objects=objects,
        detail={"sop_class_uid": str(sop_class_uid), "failed": failed},
    )


class ReceivedStudies:
    """The studies received on one association: Study Instance UID -> [patient pair, instances].
    Kept on the association by the C-STORE handler; written out once when it ends."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.studies: dict[str, list] = {}

    def add(self, study_instance_uid: str, patient_id: str, issuer: str) -> None:
        with self.lock:
            entry = self.studies.get(study_instance_uid)
            if entry is None:
                self.studies[study_instance_uid] = [(patient_id, issuer), 1]
            else:
                entry[1] += 1


_RECEIVED = "audit_received_studies"


def instance_received(assoc, study_instance_uid: str, patient_id: str, issuer: str) -> None:
    """One instance stored from this association (counted; recorded at its end)."""
    received = getattr(assoc, _RECEIVED, None)
    if received is None:
        received = ReceivedStudies()
        setattr(assoc, _RECEIVED, received)
    received.add(study_instance_uid, patient_id, issuer)


def association_ended(assoc) -> None:
    """At the end of an association (released, aborted or broken): one *DICOM Instances
    Transferred* record per study received on it (A.5.3.7, action C: the engine imported them)."""
    received = getattr(assoc, _RECEIVED, None)
    if received is None:
        return
    setattr(assoc, _RECEIVED, None)
    calling, address = _addresses(assoc)
    for study_uid, ((patient_id, issuer), count) in received.studies.items():
        trail.record_soon(
            events.INSTANCES_TRANSFERRED, action=events.CREATE, actor=calling or "(no AE title)",
            actor_kind=events.DICOM, source_address=address, destination=_called(assoc),
            patients=[(patient_id, issuer)] if patient_id else [],
            objects=[{"type": "study", "id": study_uid, "detail": {"instances": count}}],
        )


def procedure_step(pps, action: str, *, calling_ae_title: str, source_address: str) -> None:
    """MPPS N-CREATE (action C) or N-SET (action U) applied (PS3.15 A.5.3.15 Procedure Record):
    written now, inside the transaction that applies it (a change and its record commit together),
    naming the performed procedure step by its SOP Instance UID, its status and its patient."""
    issuer = ((pps.attributes or {}).get("00100021") or {}).get("Value") or [""]
    trail.record(
        events.PROCEDURE_RECORD, action=action, actor=calling_ae_title or "(no AE title)", actor_kind=events.DICOM,
        source_address=source_address, destination=settings.DICOM_AE_TITLE,
        patients=[(pps.patient_id, str(issuer[0] or ""))] if pps.patient_id else [],
        objects=[{"type": "procedure step", "id": pps.sop_instance_uid,
                  "detail": {"sop_class_uid": MPPS_SOP_CLASS, "status": pps.status,
                             "study_instance_uid": pps.study_instance_uid}}],
    )


def node_refused(calling_ae_title: str, address: str, reason: str, *, called_ae_title: str = "") -> None:
    """An association refused for who or where the peer is (PS3.15 A.5.3.11, Security Alert,
    Node Authentication, outcome 8): the AE title it claimed, its address and the reason."""
    trail.record_soon(
        events.SECURITY_ALERT, action=events.EXECUTE, event_type=events.NODE_AUTHENTICATION,
        outcome=events.SERIOUS_FAILURE, actor=calling_ae_title or "(no AE title)", actor_kind=events.DICOM,
        source_address=address, destination=called_ae_title, detail={"reason": reason, "protocol": "DICOM"},
    )


def handshake_failed(address: str, reason: str, *, called_ae_title: str = "") -> None:
    """A TLS handshake on the DICOM TLS port failed (PS3.15 A.5.3.11, Node Authentication,
    outcome 8): no AE title is known yet, the peer is named by its address."""
    trail.record_soon(
        events.SECURITY_ALERT, action=events.EXECUTE, event_type=events.NODE_AUTHENTICATION,
        outcome=events.SERIOUS_FAILURE, actor=address or "(unknown peer)", actor_kind=events.DICOM,
        source_address=address, destination=called_ae_title,
        detail={"reason": f"TLS handshake failed: {reason}"[:200], "protocol": "DICOM TLS"},
    )


def vna_address(destination) -> str:
    """How the trail names a VNA: AE title, host and port (DICOM), its base URL (DICOMweb)."""
    if destination.kind == KIND_STOW:
        return destination.url[:255]
    return f"{destination.ae_title}@{destination.host}:{destination.port}"[:255]


def study_exported(transfer, *, instances: int) -> None:
    """A study committed by a VNA (PS3.15 A.5.3.7 from the sender's side: action R), recorded in
    the transaction that marks the transfer committed: the engine sent it, to that destination."""
    study = transfer.study
    trail.record(
        events.INSTANCES_TRANSFERRED, action=events.READ, actor="routing", actor_kind=events.SYSTEM,
        destination=vna_address(transfer.destination),
        patients=[(study.patient_id, study.issuer_of_patient_id)] if study.patient_id else [],
        objects=[{"type": "study", "id": study.study_instance_uid,
                  "detail": {"instances": instances, "transfer": transfer.pk, "batch": transfer.batch}}],
    )


def priors_queried(destination, identities: list[tuple[str, str]], *, answers: int,
                   since=None, outcome: int = events.SUCCESS) -> None:
    """The engine asked a VNA for a patient's studies (PS3.15 A.5.3.10, from the querying side):
    the VNA, the identifiers asked (PatientID, IssuerOfPatientID) and the StudyDate range, the
    answers.  The query is named as the engine's own searches name theirs: a C-FIND by its SOP
    class (Study Root, STUDY level), a QIDO-RS search by its resource (``{base}/studies``,
    PS3.18 10.6)."""
    keys = {"PatientID": [i for i, _ in identities]}
    if since:
        keys["StudyDate"] = f"{since:%Y%m%d}-"
    if destination.kind == KIND_STOW:
        query = {"type": "query", "id": f"{destination.url.rstrip('/')}/studies"[:255],
                 "detail": {"keys": keys, "service": "QIDO-RS"}}
    else:
        query = {"type": "query", "id": STUDY_ROOT_FIND_SOP_CLASS,
                 "detail": {"keys": {"QueryRetrieveLevel": "STUDY", **keys}}}
    trail.record(
        events.QUERY, action=events.EXECUTE, actor="priors", actor_kind=events.SYSTEM, outcome=outcome,
        destination=vna_address(destination), patients=list(identities), objects=[query],
        detail={"answers": answers},
    )


def instances_fetched(destination, studies: dict, *, service: str, outcome: int = events.SUCCESS) -> None:
    """Instances the engine fetched from a VNA itself and stored (WADO-RS of a DICOMweb VNA):
    *DICOM Instances Transferred* (A.5.3.7), action C, one record per study, as for a C-STORE
    received (``association_ended``); ``studies``: Study Instance UID -> ((PatientID, issuer),
    instances stored)."""
    for study_uid, ((patient_id, issuer), count) in studies.items():
        trail.record(
            events.INSTANCES_TRANSFERRED, action=events.CREATE, actor="priors", actor_kind=events.SYSTEM,
            outcome=outcome, destination=vna_address(destination),
            patients=[(patient_id, issuer)] if patient_id else [],
            objects=[{"type": "study", "id": study_uid, "detail": {"instances": count}}],
            detail={"service": service},
        )
