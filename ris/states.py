"""State machines as tables: every allowed status change of every entity, in one place.

``ris.services.transitions.transition`` is the only code that changes a status; it
refuses any pair not listed here and records every change in ``StatusChange``.
Every entity with a status (steps, procedures, MPPS, reports, studies, transfers, outbound
messages) has its table in ``TABLES``.
"""

from __future__ import annotations

# --- RequestedProcedurePriority (0040,1003), PS3.3 C.4.11 -----------------------------------
PRIORITY_STAT = "STAT"
PRIORITY_HIGH = "HIGH"
PRIORITY_ROUTINE = "ROUTINE"
PRIORITY_MEDIUM = "MEDIUM"
PRIORITY_LOW = "LOW"
PRIORITY_CHOICES = [(p, p) for p in (PRIORITY_STAT, PRIORITY_HIGH, PRIORITY_ROUTINE, PRIORITY_MEDIUM, PRIORITY_LOW)]
# Sort rank for the reading worklist: STAT first.
PRIORITY_RANK = {PRIORITY_STAT: 0, PRIORITY_HIGH: 1, PRIORITY_ROUTINE: 2, PRIORITY_MEDIUM: 3, PRIORITY_LOW: 4}
# HL7 ORC-7.6 / TQ1-9 priority codes (HL7 table 0027) -> DICOM priority.
HL7_PRIORITY = {"S": PRIORITY_STAT, "A": PRIORITY_HIGH, "P": PRIORITY_HIGH, "C": PRIORITY_HIGH, "R": PRIORITY_ROUTINE, "T": PRIORITY_MEDIUM}

# --- ScheduledProcedureStepStatus (0040,0020) -----------------------------------------------
SPS_SCHEDULED = "SCHEDULED"
SPS_ARRIVED = "ARRIVED"
SPS_READY = "READY"
SPS_STARTED = "STARTED"
SPS_DEPARTED = "DEPARTED"
SPS_COMPLETED = "COMPLETED"
SPS_DISCONTINUED = "DISCONTINUED"
SPS_CANCELED = "CANCELED"
SPS_STATUSES = (
    SPS_SCHEDULED, SPS_ARRIVED, SPS_READY, SPS_STARTED, SPS_DEPARTED, SPS_COMPLETED, SPS_DISCONTINUED, SPS_CANCELED,
)
SPS_STATUS_CHOICES = [(s, s) for s in SPS_STATUSES]
SPS_FINAL = frozenset({SPS_COMPLETED, SPS_DISCONTINUED, SPS_CANCELED})
# Hidden from MWL queries by default: a modality has nothing to perform for them (IHE RAD-5).
SPS_HIDDEN_FROM_MWL = SPS_FINAL

_SPS_OPEN = (SPS_SCHEDULED, SPS_ARRIVED, SPS_READY)
SPS_TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    {(a, b) for a in _SPS_OPEN for b in _SPS_OPEN if a != b}
    | {(a, SPS_STARTED) for a in _SPS_OPEN}
    | {(a, SPS_CANCELED) for a in _SPS_OPEN}
    | {(a, SPS_DISCONTINUED) for a in _SPS_OPEN}
    # An order completed by the EHR (XO/CM, SC/CM) without an MPPS from the modality.
    | {(a, SPS_COMPLETED) for a in _SPS_OPEN}
    | {
        (SPS_STARTED, SPS_COMPLETED),
        (SPS_STARTED, SPS_DISCONTINUED),
        (SPS_STARTED, SPS_DEPARTED),
        (SPS_DEPARTED, SPS_COMPLETED),
        (SPS_DEPARTED, SPS_DISCONTINUED),
        # DC from the EHR while the exam runs.
        (SPS_STARTED, SPS_CANCELED),
    }
)

# --- Requested procedure (our own summary of its steps) -------------------------------------
RP_SCHEDULED = "SCHEDULED"
RP_IN_PROGRESS = "IN_PROGRESS"
RP_COMPLETED = "COMPLETED"
RP_DISCONTINUED = "DISCONTINUED"
RP_CANCELED = "CANCELED"
RP_STATUSES = (RP_SCHEDULED, RP_IN_PROGRESS, RP_COMPLETED, RP_DISCONTINUED, RP_CANCELED)
RP_STATUS_CHOICES = [(s, s) for s in RP_STATUSES]
RP_TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    {
        (RP_SCHEDULED, RP_IN_PROGRESS),
        (RP_SCHEDULED, RP_COMPLETED),
        (RP_SCHEDULED, RP_CANCELED),
        (RP_SCHEDULED, RP_DISCONTINUED),
        (RP_IN_PROGRESS, RP_COMPLETED),
        (RP_IN_PROGRESS, RP_DISCONTINUED),
        (RP_IN_PROGRESS, RP_CANCELED),
    }
)

# --- Placer status: what the order placer last said of a requested procedure ----------------
# ORC-1 CA (cancel) or DC (discontinue) from the EHR (HL7 v2.5.1 table 0119).  Kept apart from the
# workflow status: a cancel that arrives after the exam was performed (RP_COMPLETED, or
# RP_DISCONTINUED by the modality) leaves the workflow status as it is -- the images exist and the
# exam was done -- and is recorded here, so the reading worklist flags the study and a final
# signature needs a confirmation.  Before the exam, the workflow status follows too (CANCELED,
# DISCONTINUED) and the placer status records who asked.  No placer message clears it: a change
# (XO) of a procedure with a placer status is refused (ris.services.orders).
PLACER_NONE = ""
PLACER_CANCELED = "CANCELED"
PLACER_DISCONTINUED = "DISCONTINUED"
PLACER_STATUS_CHOICES = [(PLACER_NONE, "none"), (PLACER_CANCELED, "cancelled by the placer"),
                         (PLACER_DISCONTINUED, "discontinued by the placer")]
# The step status an ORC-1/ORC-5 pair maps to (ORDER_CONTROL_TO_SPS_STATUS) -> placer status.
SPS_TO_PLACER_STATUS = {SPS_CANCELED: PLACER_CANCELED, SPS_DISCONTINUED: PLACER_DISCONTINUED}
PLACER_STATUS_TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    {(PLACER_NONE, PLACER_CANCELED), (PLACER_NONE, PLACER_DISCONTINUED), (PLACER_DISCONTINUED, PLACER_CANCELED)}
)
# Workflow statuses of a requested procedure whose exam was performed (in whole or in part): a
# placer's CA/DC then changes the placer status only.
RP_PERFORMED = frozenset({RP_COMPLETED, RP_DISCONTINUED})

# --- HL7 order control (ORC-1) + order status (ORC-5) -> step status ------------------------
# dcm4chee's default mapping (ORC-1 HL7 table 0119, ORC-5 table 0038; docs/hl7-interface.md 1.5);
# an unknown pair is rejected with AE, ERR-3 code 101 at ORC-1.  An empty ORC-5 matches the
# ("NW", "") style keys.
ORDER_CONTROL_TO_SPS_STATUS: dict[tuple[str, str], str] = {
    ("NW", ""): SPS_SCHEDULED,
    ("NW", "SC"): SPS_SCHEDULED,
    ("NW", "IP"): SPS_SCHEDULED,
    ("SC", ""): SPS_SCHEDULED,
    ("SC", "SC"): SPS_SCHEDULED,
    ("SC", "IP"): SPS_STARTED,
    ("XO", ""): SPS_SCHEDULED,
    ("XO", "SC"): SPS_SCHEDULED,
    ("CA", ""): SPS_CANCELED,
    ("CA", "CA"): SPS_CANCELED,
    ("DC", ""): SPS_DISCONTINUED,
    ("DC", "CA"): SPS_DISCONTINUED,
    ("DC", "DC"): SPS_DISCONTINUED,
    ("XO", "CM"): SPS_COMPLETED,
    ("SC", "CM"): SPS_COMPLETED,
}

# Every transition table by entity name.
TABLES: dict[str, frozenset[tuple[str, str]]] = {
    "sps": SPS_TRANSITIONS,
    "requested_procedure": RP_TRANSITIONS,
    # RequestedProcedure.placer_status: the order placer's CA / DC (see above).
    "placer_status": PLACER_STATUS_TRANSITIONS,
    # PerformedProcedureStepStatus (0040,0252), PS3.4 F.7.2.2 (pacs.models.mpps).
    "mpps": frozenset({("IN PROGRESS", "COMPLETED"), ("IN PROGRESS", "DISCONTINUED")}),
    # Report status (ris.models.reports): draft -> preliminary -> final -> addended.
    "report": frozenset(
        {("DRAFT", "PRELIMINARY"), ("DRAFT", "FINAL"), ("PRELIMINARY", "FINAL"), ("FINAL", "ADDENDED")}
    ),
    # Received study (pacs.models.images): complete when matched and finished; a late instance re-opens it.
    "study": frozenset(
        {("RECEIVING", "COMPLETE"), ("COMPLETE", "ARCHIVED"), ("COMPLETE", "RECEIVING"), ("ARCHIVED", "RECEIVING")}
    ),
    # VNA transfer (pacs.models.transfers); retry/cancel from the transfers page record the user.
    "transfer": frozenset(
        {(a, "IN_PROGRESS") for a in ("SCHEDULED", "RETRYING", "COMMITTING")}
        | {(a, "RETRYING") for a in ("SCHEDULED", "IN_PROGRESS", "COMMITTING", "FAILED", "CANCELED")}
        | {(a, "FAILED") for a in ("SCHEDULED", "IN_PROGRESS", "COMMITTING", "RETRYING")}
        | {(a, "CANCELED") for a in ("SCHEDULED", "IN_PROGRESS", "COMMITTING", "RETRYING", "FAILED")}
        | {("IN_PROGRESS", "COMMITTING"), ("IN_PROGRESS", "COMMITTED"), ("COMMITTING", "COMMITTED")}
    ),
    # Relevant prior of an ordered procedure (pacs.models.priors): fetched from the VNA by C-MOVE,
    # retried like a transfer; a failed one may be retried by the sweep of a new order.
    "prior": frozenset(
        {(a, "IN_PROGRESS") for a in ("SCHEDULED", "RETRYING")}
        | {(a, "RETRYING") for a in ("SCHEDULED", "IN_PROGRESS", "FAILED")}
        | {(a, "FAILED") for a in ("SCHEDULED", "IN_PROGRESS", "RETRYING")}
        | {(a, "READY") for a in ("SCHEDULED", "IN_PROGRESS", "RETRYING", "FAILED")}
    ),
    # Every outbound HL7 message (hl7gateway.models.outbound: results, order status, filler
    # orders, charges, patient updates to the archive): AA delivers, AR / the attempt cap fails;
    # the operator retries a failed message or cancels a pending or failed one.
    "oru_outbound": frozenset(
        {("PENDING", "DELIVERED"), ("PENDING", "FAILED"), ("PENDING", "CANCELED"), ("FAILED", "PENDING"),
         ("FAILED", "CANCELED")}
    ),
}
