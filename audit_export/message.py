"""One audit record as a DICOM audit message (DICOM PS3.15 Annex A.5).

``to_xml(record)`` renders a record of the audit trail (a mapping with the fields of the audit
record: event_id, event_type, action, outcome, occurred_at, actor, actor_kind, source_address,
destination, objects, detail) as one ``AuditMessage`` that validates against the schema of
PS3.15 A.5.1.1 (``audit-message.rng`` beside this module) and follows the general conventions of
A.5.2 and the per-event tables of A.5.3:

- EventIdentification (A.5.2.1): EventID from PS3.16 CID 400, EventTypeCode from CID 401/403 when
  the record has one, EventActionCode, EventDateTime in UTC, EventOutcomeIndicator, and an
  EventOutcomeDescription for a failure that states its reason.
- ActiveParticipant (A.5.2.2): the requestor (a user, a DICOM AE, an HL7 sender) and the engine
  itself as the other participant, with the RoleIDCode (PS3.16 CID 402) that A.5.3 gives each for
  transfers (Source/Destination) and queries (Source issues the query, Destination answers it); a
  third participant for the destination of an outbound transfer.
- AuditSourceIdentification (A.5.2.3): AuditSourceID = settings.AUDIT_SOURCE_ID, type 4
  (application server process).
- ParticipantObjectIdentification (A.5.2.4) per object, coded as the A.5.3 tables say: the patient
  (Person, role Patient, RFC-3881 ID type 2 "Patient Number", the ID in HL7 CX form ID^^^issuer as
  IHE ITI TF-2 ITI-20 asks), a study (System object, role Report, DCM 110180 Study Instance UID,
  with its accession numbers, SOP classes and MPPS in the ParticipantObjectDescription), a DICOM
  query (System object, role Report, DCM 110181 SOP Class UID, the query data set base64 in
  ParticipantObjectQuery and its transfer syntax as a detail, A.5.3.12).

The A.5.1.1 schema requires every participant object to carry a ParticipantObjectName or a
ParticipantObjectQuery; an object that is not a query and has no name of its own is named by its
identifier.

A record that cannot be a valid message (an unknown event code, a patient missing from an event
whose A.5.3 table makes it mandatory) raises ``AuditMessageError``: its message names the field,
never a value, so that it can be logged without patient data.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from lxml import etree

DCM = "DCM"
RFC_3881 = "RFC-3881"
# HL7 v2 Table 0203 (Identifier Type): PLAC placer identifier, FILL filler identifier.
HL7_0203 = "HL7 Table 0203"

# PS3.16 CID 400 "Audit Event ID" (the EventID of each PS3.15 A.5.3 message).
EVENT_IDS = {
    "110100": "Application Activity",
    "110101": "Audit Log Used",
    "110102": "Begin Transferring DICOM Instances",
    "110103": "DICOM Instances Accessed",
    "110104": "DICOM Instances Transferred",
    "110105": "DICOM Study Deleted",
    "110106": "Export",
    "110107": "Import",
    "110108": "Network Entry",
    "110109": "Order Record",
    "110110": "Patient Record",
    "110111": "Procedure Record",
    "110112": "Query",
    "110113": "Security Alert",
    "110114": "User Authentication",
}

# PS3.16 CID 401 "Audit Event Type Code" (Application Activity, Network Entry, Security Alert)
# and CID 403 "Audit Event Type Code for User Authentication".
EVENT_TYPES = {
    "110120": "Application Start",
    "110121": "Application Stop",
    "110122": "Login",
    "110123": "Logout",
    "110124": "Attach",
    "110125": "Detach",
    "110126": "Node Authentication",
    "110127": "Emergency Override Started",
    "110128": "Network Configuration",
    "110129": "Security Configuration",
    "110130": "Hardware Configuration",
    "110131": "Software Configuration",
    "110132": "Use of Restricted Function",
    "110133": "Audit Recording Stopped",
    "110134": "Audit Recording Started",
    "110135": "Object Security Attributes Changed",
    "110136": "Security Roles Changed",
    "110137": "User security Attributes Changed",
    "110138": "Emergency Override Stopped",
    "110139": "Remote Service Operation Started",
    "110140": "Remote Service Operation Stopped",
    "110141": "Local Service Operation Started",
    "110142": "Local Service Operation Stopped",
}

# PS3.16 CID 402 "Audit Active Participant Role ID Code".
ROLE_APPLICATION = ("110150", "Application")
ROLE_APPLICATION_LAUNCHER = ("110151", "Application Launcher")
ROLE_DESTINATION = ("110152", "Destination Role ID")
ROLE_SOURCE = ("110153", "Source Role ID")

ACTIONS = {"C", "R", "U", "D", "E"}
OUTCOMES = {0, 4, 8, 12}
ACTOR_KINDS = {"user", "dicom", "hl7", "system"}

# Objects each PS3.15 A.5.3 message must carry (M in its participant object table).
REQUIRED_OBJECTS = {
    "110103": ("study", "patient"),  # A.5.3.5 DICOM Instances Accessed
    "110104": ("study", "patient"),  # A.5.3.6 DICOM Instances Transferred
    "110102": ("study", "patient"),  # A.5.3.3 Begin Transferring DICOM Instances
    "110105": ("study", "patient"),  # A.5.3.7 DICOM Study Deleted
    "110106": ("patient",),  # A.5.3.4 Data Export
    "110107": ("patient",),  # A.5.3.5 Data Import
    "110109": ("patient",),  # A.5.3.9 Order Record
    "110110": ("patient",),  # A.5.3.10 Patient Record
    "110111": ("patient",),  # A.5.3.11 Procedure Record
    "110112": ("query",),  # A.5.3.12 Query
}
# The events whose participants are a sender and a receiver (RoleIDCode Source/Destination).
TRANSFER_EVENTS = {"110102", "110104", "110106", "110107"}
XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>'
_UID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")


class AuditMessageError(ValueError):
    """The record cannot be rendered as a valid DICOM audit message (the message names the
    field, never its value)."""


@dataclass(frozen=True)
class Engine:
    """The engine as a participant and as the audit source: AUDIT_SOURCE_ID, its AE title and
    the host name peers reach it by."""

    source_id: str
    ae_title: str
    host: str

    @classmethod
    def from_settings(cls) -> Engine:
        from django.conf import settings

        return cls(settings.AUDIT_SOURCE_ID or settings.DICOM_AE_TITLE, settings.DICOM_AE_TITLE,
                   socket.getfqdn())


def _coded(parent: etree._Element, tag: str, code: str, system: str, meaning: str) -> etree._Element:
    """A CodedValueType element (A.5.1.1): csd-code, codeSystemName, originalText (the code meaning)."""
    return etree.SubElement(parent, tag, {"csd-code": code, "codeSystemName": system, "originalText": meaning})


def _b64(value: str | bytes) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode("ascii")


def _access_point_type(address: str) -> str:
    """NetworkAccessPointTypeCode (A.5.2.2): 2 for an IP address, else 1 (machine name)."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return "1"
    return "2"


def _utc(value: dt.datetime | str) -> str:
    """EventDateTime (A.5.2.5): UTC, unambiguous as to time zone (xsd:dateTime with Z)."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        raise AuditMessageError("occurred_at must be an aware datetime")
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _participant(root: etree._Element, user_id: str, requestor: bool, *, alternative: str = "",
                 role: tuple[str, str] | None = None, access_point: str = "") -> None:
    node = etree.SubElement(root, "ActiveParticipant", {"UserID": user_id})
    if alternative:
        node.set("AlternativeUserID", alternative)
    node.set("UserIsRequestor", "true" if requestor else "false")
    if access_point:
        node.set("NetworkAccessPointID", access_point)
        node.set("NetworkAccessPointTypeCode", _access_point_type(access_point))
    if role:
        _coded(node, "RoleIDCode", role[0], DCM, role[1])


def _roles(event_id: str, record: Mapping) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """(requestor's role, engine's role) by PS3.15 A.5.3: who sends and who receives."""
    if event_id == "110112":  # A.5.3.12: the querying process is Source, the one answering Destination
        return ROLE_SOURCE, ROLE_DESTINATION
    if event_id in TRANSFER_EVENTS:
        if record.get("destination"):  # the engine sends to the destination (a VNA, a peer)
            return None, ROLE_SOURCE
        return ROLE_SOURCE, ROLE_DESTINATION  # the requestor sent to the engine (C-STORE)
    if event_id == "110100":  # A.5.3.1: the application, and who launched it
        return ROLE_APPLICATION_LAUNCHER, ROLE_APPLICATION
    return None, None


def _participants(root: etree._Element, record: Mapping, engine: Engine, event_id: str) -> None:
    kind = record.get("actor_kind") or "system"
    if kind not in ACTOR_KINDS:
        raise AuditMessageError("actor_kind is not one of user, dicom, hl7, system")
    actor = str(record.get("actor") or "")
    requestor_role, engine_role = _roles(event_id, record)
    engine_ae = f"AETITLES={engine.ae_title}"
    if kind == "system" or not actor:
        # The engine acted on its own (a sweep, a start): it is the requestor.
        _participant(root, engine.source_id, True, alternative=engine_ae, role=engine_role or requestor_role,
                     access_point=engine.host)
    else:
        # A.5.2.2: a DICOM AE's AlternativeUserID lists its AE titles.
        _participant(root, actor, True, alternative=f"AETITLES={actor}" if kind == "dicom" else "",
                     role=requestor_role, access_point=str(record.get("source_address") or ""))
        _participant(root, engine.source_id, False, alternative=engine_ae, role=engine_role,
                     access_point=engine.host)
    destination = str(record.get("destination") or "")
    if destination and event_id in TRANSFER_EVENTS:
        _participant(root, destination, False, role=ROLE_DESTINATION)


def _description(poi: etree._Element, detail: Mapping) -> None:
    """ParticipantObjectDescription (A.5.1.1 DICOMObjectDescriptionContents): MPPS, accession
    numbers and SOP classes with their instance counts, in the schema's order."""
    mpps = detail.get("mpps") or []
    accessions = detail.get("AccessionNumber") or []
    sop_classes = detail.get("sop_classes") or {}
    if isinstance(accessions, str):
        accessions = [accessions]
    if isinstance(mpps, str):
        mpps = [mpps]
    if not (mpps or accessions or sop_classes):
        return
    description = etree.SubElement(poi, "ParticipantObjectDescription")
    for uid in mpps:
        etree.SubElement(description, "MPPS", {"UID": str(uid)})
    for number in accessions:
        etree.SubElement(description, "Accession", {"Number": str(number)})
    for uid, count in sop_classes.items():
        etree.SubElement(description, "SOPClass", {"UID": str(uid), "NumberOfInstances": str(int(count))})


def _object(root: etree._Element, obj: Mapping) -> None:
    kind = obj.get("type")
    object_id = str(obj.get("id") or "")
    issuer = str(obj.get("issuer") or "")
    detail = obj.get("detail") or {}
    if not object_id:
        raise AuditMessageError(f"a {kind} object has no id")
    poi = etree.Element("ParticipantObjectIdentification")
    name = detail.get("name")
    query = None
    details: list[tuple[str, str]] = []
    if kind == "patient":
        # IHE ITI TF-2 ITI-20: the patient ID in HL7 CX form, with its assigning authority.
        object_id = f"{object_id}^^^{issuer}" if issuer else object_id
        attrs, id_type = ("1", "1"), ("2", RFC_3881, "Patient Number")
        name = detail.get("PatientName") or name
    elif kind == "study":
        attrs, id_type = ("2", "3"), ("110180", DCM, "Study Instance UID")
    elif kind == "query":
        text = detail.get("query_base64")
        raw = base64.b64decode(text, validate=True) if text else str(detail.get("query") or "").encode()
        query = _b64(raw)
        if _UID.match(object_id):
            # A.5.3.12: a DICOM query is identified by its SOP Class UID; the data set as sent.
            attrs, id_type = ("2", "3"), ("110181", DCM, "SOP Class UID")
            details.append(("TransferSyntax", str(detail.get("transfer_syntax") or "1.2.840.10008.1.2")))
        else:
            # Any other search (the web): RFC 3881 ID type 10 Search Criteria, role Query.
            attrs, id_type = ("2", "24"), ("10", RFC_3881, "Search Criteria")
    elif kind == "order":
        # The order's number as an HL7 EI (number^namespace); the engine is the order filler.
        object_id = f"{object_id}^{issuer}" if issuer else object_id
        placer = detail.get("number_type") == "placer"
        attrs = ("2", None)
        id_type = ("PLAC", HL7_0203, "Placer Identifier") if placer else ("FILL", HL7_0203, "Filler Identifier")
    elif kind == "report":
        attrs, id_type = ("2", "3"), ("9", RFC_3881, "Report Number")
    elif kind == "account":
        attrs, id_type = ("1", "11"), ("11", RFC_3881, "User Identifier")
    elif kind == "node":
        attrs, id_type = ("2", "13"), ("110182", DCM, "Node ID")
    else:
        raise AuditMessageError("an object type is not one of patient, study, order, report, query, account, node")
    poi.set("ParticipantObjectID", object_id)
    poi.set("ParticipantObjectTypeCode", attrs[0])
    if attrs[1]:
        poi.set("ParticipantObjectTypeCodeRole", attrs[1])
    _coded(poi, "ParticipantObjectIDTypeCode", *id_type)
    if query is not None:
        etree.SubElement(poi, "ParticipantObjectQuery").text = query
    else:
        etree.SubElement(poi, "ParticipantObjectName").text = str(name or object_id)
    for detail_type, value in details:
        etree.SubElement(poi, "ParticipantObjectDetail", {"type": detail_type, "value": _b64(value)})
    if kind in ("study", "order"):
        _description(poi, detail)
    root.append(poi)


def build(record: Mapping, engine: Engine | None = None) -> etree._Element:
    """The AuditMessage element of one record (see the module's docstring)."""
    engine = engine or Engine.from_settings()
    event_id = str(record.get("event_id") or "")
    if event_id not in EVENT_IDS:
        raise AuditMessageError("event_id is not a PS3.16 CID 400 audit event")
    event_type = str(record.get("event_type") or "")
    if event_type and event_type not in EVENT_TYPES:
        raise AuditMessageError("event_type is not a PS3.16 CID 401/403 event type")
    action = record.get("action")
    if action not in ACTIONS:
        raise AuditMessageError("action is not one of C, R, U, D, E")
    outcome = int(record.get("outcome", 0))
    if outcome not in OUTCOMES:
        raise AuditMessageError("outcome is not one of 0, 4, 8, 12")
    objects = list(record.get("objects") or [])
    present = {obj.get("type") for obj in objects}
    for required in REQUIRED_OBJECTS.get(event_id, ()):
        if required not in present:
            raise AuditMessageError(f"a {EVENT_IDS[event_id]} message needs a {required} object (PS3.15 A.5.3)")

    root = etree.Element("AuditMessage")
    event = etree.SubElement(root, "EventIdentification", {
        "EventActionCode": action, "EventDateTime": _utc(record["occurred_at"]),
        "EventOutcomeIndicator": str(outcome)})
    _coded(event, "EventID", event_id, DCM, EVENT_IDS[event_id])
    if event_type:
        _coded(event, "EventTypeCode", event_type, DCM, EVENT_TYPES[event_type])
    reason = (record.get("detail") or {}).get("reason")
    if outcome and reason:
        etree.SubElement(event, "EventOutcomeDescription").text = str(reason)
    _participants(root, record, engine, event_id)
    source = etree.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": engine.source_id})
    etree.SubElement(source, "AuditSourceTypeCode", {"csd-code": "4"})
    if event_id == "110101":
        # A.5.3.2 Audit Log Used: the audit log itself is the object (Security Resource, URI).
        _audit_log(root, record, engine)
    for obj in objects:
        _object(root, obj)
    return root


def _audit_log(root: etree._Element, record: Mapping, engine: Engine) -> None:
    uri = str((record.get("detail") or {}).get("uri") or f"urn:audit-trail:{engine.source_id}")
    poi = etree.SubElement(root, "ParticipantObjectIdentification", {
        "ParticipantObjectID": uri, "ParticipantObjectTypeCode": "2", "ParticipantObjectTypeCodeRole": "13"})
    _coded(poi, "ParticipantObjectIDTypeCode", "12", RFC_3881, "URI")
    etree.SubElement(poi, "ParticipantObjectName").text = "Security Audit Log"


def to_xml(record: Mapping, engine: Engine | None = None) -> bytes:
    """One DICOM audit message (PS3.15 A.5.1), UTF-8 with an XML declaration, on one line (no
    line break at all: syslog receivers escape control characters in a MSG)."""
    return XML_DECLARATION + etree.tostring(build(record, engine), encoding="utf-8")
