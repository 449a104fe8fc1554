"""Audit records of every kind the engine writes (invented identifiers, no real patient data),
as the audit trail holds them: the fields of the audit record, with ``seq`` once sealed; the
schema of the messages made of them (DICOM PS3.15 Annex A.5, RFC 3881 as DICOM extends it); and
what a repository received of them (RFC 5424 syslog messages, PS3.15 A.5.1)."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

from lxml import etree

import audit_export
from audit import trail
from audit.models import AuditRecord
from audit_export.message import Engine
from audit_export.syslog import BOM
from project.auditing import events

#: The RELAX NG schema of the audit message (the engine's copy of PS3.15's).
SCHEMA = etree.RelaxNG(etree.parse(str(Path(audit_export.__file__).with_name("audit-message.rng"))))

ENGINE = Engine(source_id="RIS-PACS-TEST", ae_title="PACS", host="pacs.test.example")
WHEN = dt.datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=dt.timezone(dt.timedelta(hours=2)))
PATIENT = {"type": "patient", "id": "TEST-000123", "issuer": "TESTHOSP", "detail": {"PatientName": "TEST^PATIENT"}}
STUDY = {"type": "study", "id": "1.2.826.0.1.3680043.8.498.1001",
         "detail": {"AccessionNumber": "ACC-TEST-1", "sop_classes": {"1.2.840.10008.5.1.4.1.1.2": 120}}}
MWL_QUERY = base64.b64encode(b"\x08\x00\x50\x00\x0a\x00\x00\x00ACC-TEST-1").decode()


def record(event_id, action, *, event_type="", outcome=0, actor="system", actor_kind="system", source_address="",
           destination="", objects=(), detail=None, seq=1):
    return {"seq": seq, "occurred_at": WHEN, "event_id": event_id, "event_type": event_type, "action": action,
            "outcome": outcome, "actor": actor, "actor_kind": actor_kind, "source_address": source_address,
            "destination": destination, "objects": list(objects), "detail": detail or {}}


RECORDS = {
    "application start": record("110100", "E", event_type="110120"),
    "application stop by a user": record("110100", "E", event_type="110121", actor="admin", actor_kind="user",
                                         source_address="10.0.0.9"),
    "login": record("110114", "E", event_type="110122", actor="dr.reader", actor_kind="user",
                    source_address="10.0.0.21"),
    "failed login": record("110114", "E", event_type="110122", outcome=4, actor="dr.reader", actor_kind="user",
                           source_address="10.0.0.21", detail={"reason": "wrong password"}),
    "logout": record("110114", "E", event_type="110123", actor="dr.reader", actor_kind="user",
                     source_address="10.0.0.21"),
    "audit log used": record("110101", "R", actor="auditor", actor_kind="user", source_address="10.0.0.30"),
    "instances accessed": record("110103", "R", actor="dr.reader", actor_kind="user", source_address="10.0.0.21",
                                 objects=[STUDY, PATIENT]),
    "instances received by C-STORE": record("110104", "C", actor="CT1", actor_kind="dicom",
                                            source_address="10.0.1.5", objects=[STUDY, PATIENT]),
    "instances sent to the VNA": record("110104", "R", destination="VNA@10.0.2.7:104", objects=[STUDY, PATIENT]),
    "export": record("110106", "R", actor="dr.reader", actor_kind="user", destination="OUTSIDE@10.9.9.9:104",
                     objects=[STUDY, PATIENT]),
    "import": record("110107", "C", actor="WS1", actor_kind="dicom", source_address="10.0.1.8",
                     objects=[STUDY, PATIENT]),
    "order record from HL7": record("110109", "C", actor="EHR|HOSP", actor_kind="hl7", source_address="10.0.3.3",
                                    objects=[PATIENT, {"type": "order", "id": "F-1001", "issuer": "RIS",
                                                       "detail": {"AccessionNumber": "ACC-TEST-1"}}]),
    "patient record update": record("110110", "U", actor="EHR|HOSP", actor_kind="hl7", objects=[PATIENT]),
    "procedure record with report": record("110111", "U", actor="dr.reader", actor_kind="user",
                                           objects=[PATIENT, STUDY, {"type": "report", "id": "R-77"}]),
    "MWL query": record("110112", "E", actor="CT1", actor_kind="dicom", source_address="10.0.1.5",
                        objects=[{"type": "query", "id": "1.2.840.10008.5.1.4.31",
                                  "detail": {"query_base64": MWL_QUERY, "transfer_syntax": "1.2.840.10008.1.2.1"}}]),
    "reading worklist search": record("110112", "E", actor="dr.reader", actor_kind="user",
                                      objects=[{"type": "query", "id": "reading-worklist",
                                                "detail": {"query": "modality=CT&status=unread"}}]),
    "security alert: restricted function": record("110113", "E", event_type="110132", outcome=8, actor="nurse1",
                                                  actor_kind="user", source_address="10.0.0.40",
                                                  objects=[{"type": "account", "id": "nurse1"}]),
    "security alert: node authentication": record("110113", "E", event_type="110126", outcome=4, actor="UNKNOWN1",
                                                  actor_kind="dicom", source_address="192.0.2.10",
                                                  objects=[{"type": "node", "id": "192.0.2.10"}],
                                                  detail={"reason": "calling AE title not admitted"}),
}


def login(n: int) -> AuditRecord:
    """A login of user ``n`` (the actor names the record in what the repository receives)."""
    return trail.record(events.USER_AUTHENTICATION, event_type=events.LOGIN, action=events.EXECUTE,
                        actor=f"test.user{n}", actor_kind=events.USER, source_address="10.0.0.21")


def actors(received) -> list[str]:
    """The requestor's UserID of each message received, in the order the repository wrote them."""
    out = []
    for message in received:
        xml = message.raw.split(b" ", 7)[7][len(BOM):]
        out.append(etree.fromstring(xml).find("ActiveParticipant").get("UserID"))
    return out
