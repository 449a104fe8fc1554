"""What registering a patient and placing a new order decide, without writing anything.

Each rule is decided here once: a plain function takes the command (``ris.commands``) and what
the database holds (a ``*Seen`` value, read by the reader of ``ris.services.writers``) and
returns a plan -- the rows to write, the numbers to assign, the audit records -- or raises the
``DomainError`` the HL7 adapter answers (AE with its ERR-3 code and ERR-2 location, HL7 v2.5.1
chapter 2.15.5).  A writer per database kind (``ris.services.writers``) writes the plan as it
is; none of them decides anything.

The rules (IHE RAD TF-2 RAD-1/RAD-2/RAD-4/RAD-12; HL7 v2.5.1 chapters 3 and 4):

- patient: found by the primary PID-3 identifier (PID-3.1 under PID-3.4), the survivor when it
  was merged (A40); a patient seen for the first time is registered with that identifier; the
  other PID-3 repetitions are added when no patient holds them yet; non-empty demographics
  (PID-5, PID-7, PID-8) that differ replace the stored ones.  Audited as Patient Record
  (DICOM PS3.15 A.5.3.14) C or U with the changed values.
- visit (PV1-19, else PID-18): created, or its non-empty PV1 fields that differ copied.
- new order (ORC-1 = NW): refused when its placer (ORC-2) or filler (ORC-3) number exists
  (HL7 0357 code 205) or it names no procedure (101).  Per procedure: a missing accession
  number (OBR-18 / IPC-1) is assigned from the database sequence in the format
  ``ACCESSION_NUMBER_FORMAT`` (issuer ``ACCESSION_NUMBER_ISSUER``), a sent one must be unused
  (205 at OBR-18); a missing Study Instance UID (ZDS-1 / IPC-3) is generated (PS3.5 B.2), a sent
  one must be unused (205); a missing requested procedure ID is the accession number; a missing
  step ID the requested procedure ID; a missing start: now.  Audited as Order Record
  (PS3.15 A.5.3.13) C.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime

from django.conf import settings

from project.auditing import events
from ris import auditing, states
from ris.commands import OrderCommand, PatientData, PatientIdentity, ProcedureData, VisitData
from ris.errors import DuplicateKey, RequiredFieldMissing
from ris.services import identifiers

PATIENT_FIELDS = ("patient_name", "patient_birth_date", "patient_sex")
VISIT_FIELDS = ("patient_class", "assigned_location", "referring_physician_name", "admit_datetime")


# --- What the database holds ------------------------------------------------------------------

@dataclass
class VisitSeen:
    pk: int
    patient_class: str = ""
    assigned_location: str = ""
    referring_physician_name: str = ""
    admit_datetime: datetime | None = None


@dataclass
class PatientSeen:
    """The patient of the primary identifier (the survivor of a merge), or ``pk`` None."""

    pk: int | None = None
    patient_name: str = ""
    patient_birth_date: date | None = None
    patient_sex: str = ""
    visit: VisitSeen | None = None  # the patient's visit with the command's visit number
    known_identifiers: frozenset[tuple[str, str]] = frozenset()  # of PID-3 repetitions 2..n: held already


@dataclass
class OrderSeen:
    patient: PatientSeen
    order_exists: bool = False  # placer number (ORC-2) or filler number (ORC-3) already stored
    used_accessions: frozenset[str] = frozenset()  # of the sent accession numbers
    used_uids: frozenset[str] = frozenset()  # of the sent Study Instance UIDs
    numbers: list[int] = field(default_factory=list)  # sequence values for the accession numbers to assign


# --- What to write ----------------------------------------------------------------------------

@dataclass
class AuditRecord:
    """The arguments of one ``ris.auditing.change`` call."""

    event_id: object
    action: str
    patients: list[tuple[str, str]]
    objects: list[dict] = field(default_factory=list)
    detail: dict | None = None
    actor: str = ""

    def record(self) -> None:
        auditing.change(self.event_id, self.action, patients=self.patients, objects=self.objects,
                        detail=self.detail, actor=self.actor)


@dataclass
class PatientPlan:
    primary: PatientIdentity
    pk: int | None  # None: register a new patient
    values: dict  # new patient: its demographics; known patient: the changed ones
    add_identifiers: list[PatientIdentity]
    audits: list[AuditRecord]

    @property
    def create(self) -> bool:
        return self.pk is None


@dataclass
class VisitPlan:
    visit_number: str
    pk: int | None  # None: a new visit
    values: dict  # new visit: all PV1 fields; known visit: the changed ones


@dataclass
class ProcedurePlan:
    values: dict  # the RequestedProcedure columns
    steps: list[dict]  # the ScheduledProcedureStep columns of each step


@dataclass
class OrderPlan:
    patient: PatientPlan
    visit: VisitPlan | None
    values: dict  # the Order columns
    procedures: list[ProcedurePlan]
    to_status: str
    audits: list[AuditRecord]  # patient records first, then the order record

    @property
    def accession_numbers(self) -> list[str]:
        return [p.values["accession_number"] for p in self.procedures]


# --- The rules --------------------------------------------------------------------------------

def patient_plan(data: PatientData, seen: PatientSeen) -> PatientPlan:
    held = {*seen.known_identifiers, (data.primary.id_number, data.primary.assigning_authority)}
    extra = []
    for ident in data.identifiers[1:]:  # the first of repeated identifiers counts, as in a get-or-create
        key = (ident.id_number, ident.assigning_authority)
        if key not in held:
            held.add(key)
            extra.append(ident)
    if seen.pk is None:
        return PatientPlan(
            primary=data.primary, pk=None, values={name: getattr(data, name) for name in PATIENT_FIELDS},
            add_identifiers=extra,
            audits=[AuditRecord(events.PATIENT_RECORD, events.CREATE,
                                patients=[auditing.identity(i) for i in data.identifiers])])
    before = {name: getattr(seen, name) for name in PATIENT_FIELDS}
    changed = {name: getattr(data, name) for name in PATIENT_FIELDS
               if getattr(data, name) not in ("", None) and before[name] != getattr(data, name)}
    audits = []
    if changed:
        audits.append(AuditRecord(events.PATIENT_RECORD, events.UPDATE, patients=[auditing.identity(data.primary)],
                                  detail={"changed": auditing.changes(before, changed)}))
    return PatientPlan(primary=data.primary, pk=seen.pk, values=changed, add_identifiers=extra, audits=audits)


def visit_plan(data: VisitData | None, seen: VisitSeen | None) -> VisitPlan | None:
    if data is None:
        return None
    if seen is None:
        return VisitPlan(data.visit_number, None, {name: getattr(data, name) for name in VISIT_FIELDS})
    changed = {name: getattr(data, name) for name in VISIT_FIELDS
               if getattr(data, name) not in ("", None) and getattr(seen, name) != getattr(data, name)}
    return VisitPlan(data.visit_number, seen.pk, changed)


def step_ids(requested_procedure_id: str, data: ProcedureData, used: set[str]) -> list[str]:
    """Scheduled Procedure Step IDs of ``data.steps``: IPC-4/OBR-20, else the requested procedure ID;
    several steps without one are numbered ``<rp id>.<n>``."""
    ids = []
    for i, step in enumerate(data.steps, start=1):
        sps_id = step.scheduled_procedure_step_id or requested_procedure_id
        if sps_id in used:  # several IPC without IPC-4: number them
            sps_id = f"{requested_procedure_id[:12]}.{i}"
        used.add(sps_id)
        ids.append(sps_id[:16])
    return ids


def procedure_plans(procedures: list[ProcedureData], *, used_accessions: frozenset[str], used_uids: frozenset[str],
                    numbers: Iterable[int], now: datetime,
                    new_uid: Callable[[], str] = identifiers.new_study_instance_uid) -> list[ProcedurePlan]:
    """The requested procedures and scheduled steps of new procedures (OBR / IPC groups)."""
    used_accessions, used_uids, numbers = set(used_accessions), set(used_uids), iter(numbers)
    result = []
    for data in procedures:
        accession = data.accession_number
        assigned = not accession
        if assigned:
            accession = identifiers.accession_number_for(next(numbers))
        elif accession in used_accessions:
            raise DuplicateKey(f"accession number {accession} is already used", location=f"{data.location}^18")
        uid = data.study_instance_uid or new_uid()
        if data.study_instance_uid and uid in used_uids:
            raise DuplicateKey(f"Study Instance UID {uid} is already used", location=f"{data.location}^1")
        used_accessions.add(accession)
        used_uids.add(uid)
        rp_id = (data.requested_procedure_id or accession)[:16]
        steps = [{
            "scheduled_procedure_step_id": sps_id, "modality": step.modality,
            "scheduled_station_ae_title": step.scheduled_station_ae_title,
            "scheduled_station_name": step.scheduled_station_name,
            "scheduled_procedure_step_location": step.scheduled_procedure_step_location,
            "scheduled_start": step.scheduled_start or now,
            "scheduled_procedure_step_description": step.scheduled_procedure_step_description,
            "protocol_code_value": step.protocol_code_value, "protocol_code_scheme": step.protocol_code_scheme,
            "protocol_code_meaning": step.protocol_code_meaning,
        } for step, sps_id in zip(data.steps, step_ids(rp_id, data, set()), strict=True)]
        result.append(ProcedurePlan({
            "requested_procedure_id": rp_id,
            "requested_procedure_description": data.requested_procedure_description,
            "procedure_code_value": data.procedure_code_value, "procedure_code_scheme": data.procedure_code_scheme,
            "procedure_code_meaning": data.procedure_code_meaning,
            "requested_procedure_priority": data.requested_procedure_priority or states.PRIORITY_ROUTINE,
            "study_instance_uid": uid, "accession_number": accession,
            "accession_number_issuer": settings.ACCESSION_NUMBER_ISSUER if assigned else "",
            "accession_assigned_by_us": assigned,
        }, steps))
    return result


def numbers_needed(procedures: list[ProcedureData]) -> int:
    """How many accession numbers the filler assigns (procedures sent without OBR-18 / IPC-1)."""
    return sum(1 for p in procedures if not p.accession_number)


def order_audit(cmd: OrderCommand, action: str, accessions, detail: dict | None = None) -> AuditRecord:
    """Order Record (PS3.15 A.5.3.13) of an order placed or changed by ``cmd``: the patient as the
    message names it (PID-3), the order numbers (ORC-2, ORC-3) and accession numbers (OBR-18)."""
    return AuditRecord(events.ORDER_RECORD, action, patients=[auditing.identity(cmd.patient.primary)],
                       objects=auditing.order_objects(accessions=accessions, placer=cmd.placer_order_number,
                                                      namespace=cmd.placer_namespace,
                                                      filler=cmd.filler_order_number),
                       detail={"order_control": cmd.order_control, **(detail or {})},
                       actor=cmd.sending_application)


def new_order_plan(cmd: OrderCommand, to_status: str, seen: OrderSeen, *, now: datetime,
                   new_uid: Callable[[], str] = identifiers.new_study_instance_uid) -> OrderPlan:
    """NW: the new order with its patient, visit, requested procedures and scheduled steps."""
    if seen.order_exists:
        raise DuplicateKey(f"order {cmd.placer_order_number or cmd.filler_order_number} already exists",
                           location=f"{cmd.location}^2")
    if not cmd.procedures:
        raise RequiredFieldMissing("new order without a procedure", location=cmd.location)
    patient = patient_plan(cmd.patient, seen.patient)
    visit = visit_plan(cmd.visit, seen.patient.visit)
    procedures = procedure_plans(cmd.procedures, used_accessions=seen.used_accessions, used_uids=seen.used_uids,
                                 numbers=seen.numbers, now=now, new_uid=new_uid)
    values = {
        "placer_order_number": cmd.placer_order_number, "placer_namespace": cmd.placer_namespace,
        "filler_order_number": cmd.filler_order_number, "order_control": cmd.order_control,
        "order_status": cmd.order_status, "ordering_provider": cmd.ordering_provider[:320],
        "referring_physician_name": cmd.referring_physician_name[:320], "reason_for_study": cmd.reason_for_study,
        "sending_application": cmd.sending_application[:180], "sending_facility": cmd.sending_facility[:180],
    }
    accessions = [p.values["accession_number"] for p in procedures]
    return OrderPlan(patient=patient, visit=visit, values=values, procedures=procedures, to_status=to_status,
                     audits=[*patient.audits, order_audit(cmd, events.CREATE, accessions)])
