"""What the HL7 gateway puts on the audit trail (DICOM PS3.15 A.5.3), in one place.

The inbound messages' changes are recorded where they are applied (the ris services); here:

- a result (ORU), an order status message or a patient update to an archive (ADT) delivered:
  *Export* (A.5.3.4), action R, when the receiving system acknowledged it with AA (HL7 v2.5.1 2.9.2 original acknowledgment mode: only AA says it was accepted),
  written in the transaction that marks the message delivered; the destination, the patient
  (PID-3 as sent) and the order (OBR-18 accession number) and report version;
- a message refused by the sender policy: *Security Alert* (A.5.3.11), Node Authentication,
  outcome 8: the sending application^facility (MSH-3^MSH-4) and its address, handed to the audit
  writer thread so that the refusal's AR is not delayed.
"""

from __future__ import annotations

from audit import trail
from hl7gateway.models.outbound import ADT
from project.auditing import events


def _pid3_pairs(patient_id_text: str) -> list[tuple[str, str]]:
    """(ID, assigning authority) of each CX repetition of PID-3 as sent (components 1 and 4)."""
    pairs = []
    for repetition in (patient_id_text or "").split("~"):
        components = repetition.split("^")
        if components[0]:
            authority = components[3] if len(components) > 3 else ""
            pairs.append((components[0], authority.split("&")[0]))
    return pairs


def oru_delivered(row, *, host: str, port: int) -> None:
    """An outbound message the destination acknowledged with AA (PS3.15 A.5.3.4 Export): an
    ORU^R01 (its report version), an order status message (its order status, ORC-5), or a
    patient update to an archive (ADT^A08 / ADT^A40, its patient as PID-3 sent); written now, in
    the caller's transaction (the one that records the delivery)."""
    if row.kind == ADT:
        objects = [{"type": "patient update", "id": row.message_control_id or "",
                    "detail": {"message_type": row.message_type}}]
    elif row.report_version_id is not None:
        objects = [{"type": "report", "id": str(row.report_version_id),
                    "detail": {"message_control_id": row.message_control_id or "",
                               "result_status": row.result_status}}]
    else:
        objects = [{"type": "order status", "id": str(row.requested_procedure_id),
                    "detail": {"message_control_id": row.message_control_id or "", "order_status": row.order_status}}]
    if row.accession_number:
        objects.append({"type": "order", "id": row.accession_number})
    trail.record(
        events.EXPORT, action=events.READ, actor="hl7gateway worker", actor_kind=events.SYSTEM,
        destination=f"{host}:{port}", patients=_pid3_pairs(row.patient_id_text), objects=objects,
        detail={"message_type": row.message_type, "outbound_message": row.pk, "destination_id": row.destination_id},
    )


def sender_refused(address: str, msh, reason: str) -> None:
    """A message refused by the sender policy (PS3.15 A.5.3.11 Security Alert, Node
    Authentication, outcome 8): by the audit writer thread, never delaying the AR."""
    sender = f"{msh.msh_3}^{msh.msh_4}" if msh is not None and (msh.msh_3 or msh.msh_4) else "(no sender)"
    trail.record_soon(
        events.SECURITY_ALERT, action=events.EXECUTE, event_type=events.NODE_AUTHENTICATION,
        outcome=events.SERIOUS_FAILURE, actor=sender[:255], actor_kind=events.HL7, source_address=address,
        detail={"reason": reason[:255], "protocol": "HL7 MLLP",
                "message_type": (msh.message_type if msh is not None else "")[:20]},
    )


def tls_refused(address: str, reason: str) -> None:
    """A connection to the MLLP over TLS port ended at the handshake (no, untrusted or expired
    client certificate; not TLS; too slow): Security Alert, Node Authentication, outcome 8, the
    peer named by its address (no message was read).  By the audit writer thread."""
    trail.record_soon(
        events.SECURITY_ALERT, action=events.EXECUTE, event_type=events.NODE_AUTHENTICATION,
        outcome=events.SERIOUS_FAILURE, actor=address or "(unknown peer)", actor_kind=events.HL7,
        source_address=address, detail={"reason": reason[:255], "protocol": "HL7 MLLP over TLS"},
    )
