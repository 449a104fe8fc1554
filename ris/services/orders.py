"""Orders: place, replace, status change, cancel, discontinue, complete (IHE RAD-2/RAD-4/RAD-13).

ORC-1 (order control) + ORC-5 (order status) give the target status of the scheduled steps
through ``ris.states.ORDER_CONTROL_TO_SPS_STATUS`` (shared reference section 3, dcm4chee's
default).  Identifiers we assign come from ``ris.services.identifiers``; statuses change only
through ``ris.services.transitions.transition``.  Called inside the caller's transaction.

A new order (NW, the hot path of the HL7 intake) is placed on PostgreSQL with two statements:
one lookup (order already there? patient and visit by identifier, accession numbers and Study
Instance UIDs already used, new accession numbers from the sequence) and one INSERT chain
(visit, order, requested procedures, scheduled steps).  The rules are the same as on the ORM
path (``_place_order_orm``, used on other databases and when ``SQL_FAST_PATH`` is off), which
the tests run too.
"""

from __future__ import annotations

from django.conf import settings
from django.db import connection
from django.utils import timezone

from audit import events
from ris import auditing, states
from ris.commands import OrderCommand, ProcedureData
from ris.errors import DuplicateKey, RequiredFieldMissing, TableValueNotFound, UnknownKey
from ris.models import Order, Patient, RequestedProcedure, ScheduledProcedureStep, Visit
from ris.services import identifiers, patients, pg
from ris.services.transitions import transition
from ris.signals import procedure_changed

# Requested procedure status that follows from its steps' statuses.
_STEP_TO_RP = {
    states.SPS_STARTED: states.RP_IN_PROGRESS,
    states.SPS_DEPARTED: states.RP_IN_PROGRESS,
    states.SPS_COMPLETED: states.RP_COMPLETED,
    states.SPS_DISCONTINUED: states.RP_DISCONTINUED,
    states.SPS_CANCELED: states.RP_CANCELED,
}


def target_status(cmd: OrderCommand) -> str:
    try:
        return states.ORDER_CONTROL_TO_SPS_STATUS[(cmd.order_control, cmd.order_status)]
    except KeyError:
        raise TableValueNotFound(f"order control {cmd.order_control}/{cmd.order_status} is not mapped",
                                 location=f"{cmd.location}^1") from None


def find_order(cmd: OrderCommand, *, lock: bool = True) -> Order | None:
    """By placer number (ORC-2.1 + ORC-2.2), else by filler number (ORC-3.1)."""
    qs = Order.objects.select_for_update() if lock else Order.objects.all()
    if cmd.placer_order_number:
        order = qs.filter(placer_namespace=cmd.placer_namespace, placer_order_number=cmd.placer_order_number).first()
        if order is not None:
            return order
    if cmd.filler_order_number:
        return qs.filter(filler_order_number=cmd.filler_order_number).first()
    return None


def apply_order(cmd: OrderCommand) -> dict:
    """Apply one ORC group (or several with one placer number) of an ORM^O01 / OMI^O23."""
    to_status = target_status(cmd)
    if cmd.order_control == "NW":
        return place_order(cmd, to_status)
    order = find_order(cmd)
    if order is None:
        raise UnknownKey(f"order {cmd.placer_order_number or cmd.filler_order_number} is unknown",
                         location=f"{cmd.location}^{2 if cmd.placer_order_number else 3}")
    if order.patient.merged_into_id is None:
        patients.upsert_patient(cmd.patient)
    if cmd.order_control == "XO":
        return replace_order(order, cmd, to_status)
    return change_order_status(order, cmd, to_status)


def _audit_order(cmd: OrderCommand, action: str, accessions, detail: dict | None = None) -> None:
    """Order Record (PS3.15 A.5.3.13) of an order placed or changed by ``cmd``: the patient as the
    message names it (PID-3), the order numbers (ORC-2, ORC-3) and accession numbers (OBR-18)."""
    auditing.change(events.ORDER_RECORD, action, patients=[auditing.identity(cmd.patient.primary)],
                    objects=auditing.order_objects(accessions=accessions, placer=cmd.placer_order_number,
                                                   namespace=cmd.placer_namespace, filler=cmd.filler_order_number),
                    detail={"order_control": cmd.order_control, **(detail or {})},
                    actor=cmd.sending_application)


# The PostgreSQL two-statement path for NW orders (see the module docstring); tests switch it
# off to run the ORM path as well.
SQL_FAST_PATH = True


def place_order(cmd: OrderCommand, to_status: str = states.SPS_SCHEDULED) -> dict:
    """NW: a new order with its requested procedures and scheduled steps.

    Missing accession number: assigned from the database sequence; missing Study Instance UID:
    generated; missing requested procedure ID: the accession number; missing step ID: the
    requested procedure ID; missing start: now (shared reference section 3).
    """
    if SQL_FAST_PATH and to_status == states.SPS_SCHEDULED and connection.vendor == "postgresql":
        return _place_order_pg(cmd)
    return _place_order_orm(cmd, to_status)


def _place_order_orm(cmd: OrderCommand, to_status: str) -> dict:
    if find_order(cmd, lock=False) is not None:
        raise DuplicateKey(f"order {cmd.placer_order_number or cmd.filler_order_number} already exists",
                           location=f"{cmd.location}^2")
    if not cmd.procedures:
        raise RequiredFieldMissing("new order without a procedure", location=cmd.location)
    patient, _ = patients.upsert_patient(cmd.patient)
    visit = patients.upsert_visit(patient, cmd.visit)
    order = Order.objects.create(
        patient=patient, visit=visit, placer_order_number=cmd.placer_order_number,
        placer_namespace=cmd.placer_namespace, filler_order_number=cmd.filler_order_number,
        order_control=cmd.order_control, order_status=cmd.order_status, ordering_provider=cmd.ordering_provider[:320],
        referring_physician_name=cmd.referring_physician_name[:320], reason_for_study=cmd.reason_for_study,
        sending_application=cmd.sending_application[:180], sending_facility=cmd.sending_facility[:180],
    )
    procs = [_create_procedure(order, p, cmd, to_status) for p in cmd.procedures]
    _audit_order(cmd, events.CREATE, [p.accession_number for p in procs])
    return {"order": order.pk, "patient": patient.pk, "procedures": [p.pk for p in procs],
            "accession_numbers": [p.accession_number for p in procs]}


_PG_LOOKUP = f"""
SELECT
  (%(placer)s::text <> '' AND EXISTS (SELECT 1 FROM ris_order WHERE placer_order_number <> ''
                                 AND placer_namespace = %(namespace)s AND placer_order_number = %(placer)s))
  OR (%(filler)s::text <> '' AND EXISTS (SELECT 1 FROM ris_order WHERE filler_order_number <> ''
                                    AND filler_order_number = %(filler)s)),
  p.id, p.merged_into_id, p.patient_name, p.patient_birth_date, p.patient_sex,
  v.id, v.patient_class, v.assigned_location, v.referring_physician_name, v.admit_datetime,
  ARRAY(SELECT accession_number FROM ris_requestedprocedure WHERE accession_number = ANY(%(accessions)s::varchar[])),
  ARRAY(SELECT study_instance_uid FROM ris_requestedprocedure
        WHERE study_instance_uid = ANY(%(uids)s::varchar[])),
  ARRAY(SELECT nextval('{identifiers.ACCESSION_SEQUENCE}') FROM generate_series(1, %(assign)s::int))
FROM (SELECT 1) AS one
LEFT JOIN ris_patientidentifier i ON i.id_number = %(id_number)s AND i.assigning_authority = %(authority)s
LEFT JOIN ris_patient p ON p.id = i.patient_id
LEFT JOIN ris_visit v ON v.patient_id = p.id AND v.visit_number = %(visit_number)s
"""

# Every NOT NULL column of the four tables is listed (tests compare with the models).
_PG_INSERT = """
WITH v AS (
  INSERT INTO ris_visit (patient_id, visit_number, patient_class, assigned_location, referring_physician_name,
                         admit_datetime, created_at, updated_at)
  SELECT %(patient)s::bigint, %(visit_number)s::varchar, %(patient_class)s::varchar, %(assigned_location)s::varchar,
         %(visit_referring)s::varchar, %(admit)s::timestamptz, %(now)s::timestamptz, %(now)s::timestamptz
  WHERE %(new_visit)s::boolean
  RETURNING id
), o AS (
  INSERT INTO ris_order (patient_id, visit_id, placer_order_number, placer_namespace, filler_order_number,
                         order_control, order_status, ordering_provider, referring_physician_name,
                         reason_for_study, sending_application, sending_facility, created_by_filler,
                         created_at, updated_at)
  VALUES (%(patient)s::bigint, COALESCE((SELECT id FROM v), %(visit)s::bigint), %(placer)s, %(namespace)s, %(filler)s,
          %(order_control)s, %(order_status)s, %(ordering_provider)s, %(referring)s, %(reason)s,
          %(sending_application)s, %(sending_facility)s, false, %(now)s, %(now)s)
  RETURNING id
), rp AS (
  INSERT INTO ris_requestedprocedure (order_id, requested_procedure_id, requested_procedure_description,
                                      procedure_code_value, procedure_code_scheme, procedure_code_meaning,
                                      requested_procedure_priority, study_instance_uid, accession_number,
                                      accession_number_issuer, accession_assigned_by_us, status,
                                      created_at, updated_at)
  SELECT o.id, d.rp_id, d.description, d.code_value, d.code_scheme, d.code_meaning, d.priority, d.uid, d.accession,
         d.issuer, d.assigned, %(rp_status)s::varchar, %(now)s::timestamptz, %(now)s::timestamptz
  FROM o, unnest(%(rp_ids)s::varchar[], %(descriptions)s::varchar[], %(code_values)s::varchar[],
                 %(code_schemes)s::varchar[], %(code_meanings)s::varchar[], %(priorities)s::varchar[],
                 %(rp_uids)s::varchar[], %(rp_accessions)s::varchar[], %(issuers)s::varchar[],
                 %(assigned)s::boolean[]) WITH ORDINALITY
       AS d(rp_id, description, code_value, code_scheme, code_meaning, priority, uid, accession, issuer, assigned, n)
  ORDER BY d.n
  RETURNING id, accession_number
), s AS (
  INSERT INTO ris_scheduledprocedurestep (requested_procedure_id, scheduled_procedure_step_id, modality,
                                          scheduled_station_ae_title, scheduled_station_name,
                                          scheduled_procedure_step_location, scheduled_start,
                                          scheduled_performing_physician_name, scheduled_procedure_step_description,
                                          protocol_code_value, protocol_code_scheme, protocol_code_meaning, status,
                                          created_at, updated_at)
  SELECT rp.id, d.sps_id, d.modality, d.ae, d.station, d.location, d.start, '', d.description, d.pc_value,
         d.pc_scheme, d.pc_meaning, %(sps_status)s::varchar, %(now)s::timestamptz, %(now)s::timestamptz
  FROM unnest(%(s_accessions)s::varchar[], %(sps_ids)s::varchar[], %(modalities)s::varchar[], %(aes)s::varchar[],
              %(stations)s::varchar[], %(locations)s::varchar[], %(starts)s::timestamptz[],
              %(s_descriptions)s::varchar[], %(pc_values)s::varchar[], %(pc_schemes)s::varchar[],
              %(pc_meanings)s::varchar[]) WITH ORDINALITY
       AS d(accession, sps_id, modality, ae, station, location, start, description, pc_value, pc_scheme,
            pc_meaning, n)
  JOIN rp ON rp.accession_number = d.accession
  ORDER BY d.n
  RETURNING 1
)
SELECT (SELECT id FROM o), (SELECT count(*) FROM s),
       ARRAY(SELECT rp.id FROM rp JOIN unnest(%(rp_accessions)s::varchar[]) WITH ORDINALITY AS a(accession, n)
             ON rp.accession_number = a.accession ORDER BY a.n)
"""


def _place_order_pg(cmd: OrderCommand) -> dict:
    """``place_order`` for status SCHEDULED on PostgreSQL: one lookup, one INSERT chain.

    Same rules and errors as ``_place_order_orm``; a patient seen for the first time, a merged
    patient or extra identifiers go through ``patients.upsert_patient`` (advisory lock).
    """
    procs = cmd.procedures
    patient_data, visit_data = cmd.patient, cmd.visit
    primary = patient_data.primary
    with pg.cursor() as cursor:
        cursor.execute(_PG_LOOKUP, {
            "placer": cmd.placer_order_number, "namespace": cmd.placer_namespace, "filler": cmd.filler_order_number,
            "accessions": [p.accession_number for p in procs if p.accession_number],
            "uids": [p.study_instance_uid for p in procs if p.study_instance_uid],
            "assign": sum(1 for p in procs if not p.accession_number),
            "id_number": primary.id_number, "authority": primary.assigning_authority,
            "visit_number": visit_data.visit_number if visit_data else "",
        })
        (exists, patient_pk, merged_into, name, birth_date, sex, visit_pk, patient_class, location, visit_referring,
         admit, used_accessions, used_uids, numbers) = cursor.fetchone()
    if exists:
        raise DuplicateKey(f"order {cmd.placer_order_number or cmd.filler_order_number} already exists",
                           location=f"{cmd.location}^2")
    if not procs:
        raise RequiredFieldMissing("new order without a procedure", location=cmd.location)
    new_visit = created = False
    if patient_pk is None and len(patient_data.identifiers) == 1:
        # First sight of the identifier: lock it, create the patient (its visit goes in the chain).
        patient_pk = patients.create_patient_pg(patient_data)
        created = patient_pk is not None
    if created:
        new_visit = visit_data is not None
    elif patient_pk is None or merged_into is not None or len(patient_data.identifiers) > 1:
        patient, _ = patients.upsert_patient(patient_data)
        patient_pk = patient.pk
        visit = patients.upsert_visit(patient, visit_data)
        visit_pk = visit.pk if visit else None
    else:
        patients.update_demographics(Patient(pk=patient_pk, patient_name=name, patient_birth_date=birth_date,
                                             patient_sex=sex), patient_data)
        if visit_data is not None and visit_pk is None:
            new_visit = True
        elif visit_data is not None:
            patients.update_visit(Visit(pk=visit_pk, patient_id=patient_pk, visit_number=visit_data.visit_number,
                                        patient_class=patient_class, assigned_location=location,
                                        referring_physician_name=visit_referring, admit_datetime=admit), visit_data)
    now = timezone.now()
    numbers = iter(numbers)
    used_accessions, used_uids = set(used_accessions), set(used_uids)
    rp = {k: [] for k in ("rp_ids", "descriptions", "code_values", "code_schemes", "code_meanings", "priorities",
                          "rp_uids", "rp_accessions", "issuers", "assigned")}
    st = {k: [] for k in ("s_accessions", "sps_ids", "modalities", "aes", "stations", "locations", "starts",
                          "s_descriptions", "pc_values", "pc_schemes", "pc_meanings")}
    for data in procs:
        accession = data.accession_number
        assigned = not accession
        if assigned:
            accession = identifiers.accession_number_for(next(numbers))
        elif accession in used_accessions:
            raise DuplicateKey(f"accession number {accession} is already used", location=f"{data.location}^18")
        uid = data.study_instance_uid or identifiers.new_study_instance_uid()
        if data.study_instance_uid and uid in used_uids:
            raise DuplicateKey(f"Study Instance UID {uid} is already used", location=f"{data.location}^1")
        used_accessions.add(accession)
        used_uids.add(uid)
        rp_id = (data.requested_procedure_id or accession)[:16]
        for key, value in (("rp_ids", rp_id), ("descriptions", data.requested_procedure_description),
                           ("code_values", data.procedure_code_value), ("code_schemes", data.procedure_code_scheme),
                           ("code_meanings", data.procedure_code_meaning),
                           ("priorities", data.requested_procedure_priority or states.PRIORITY_ROUTINE),
                           ("rp_uids", uid), ("rp_accessions", accession),
                           ("issuers", settings.ACCESSION_NUMBER_ISSUER if assigned else ""), ("assigned", assigned)):
            rp[key].append(value)
        for step, sps_id in zip(data.steps, step_ids(rp_id, data, set()), strict=True):
            for key, value in (("s_accessions", accession), ("sps_ids", sps_id), ("modalities", step.modality),
                               ("aes", step.scheduled_station_ae_title), ("stations", step.scheduled_station_name),
                               ("locations", step.scheduled_procedure_step_location),
                               ("starts", step.scheduled_start or now),
                               ("s_descriptions", step.scheduled_procedure_step_description),
                               ("pc_values", step.protocol_code_value), ("pc_schemes", step.protocol_code_scheme),
                               ("pc_meanings", step.protocol_code_meaning)):
                st[key].append(value)
    with pg.cursor() as cursor:
        cursor.execute(_PG_INSERT, {
            **rp, **st, "now": now, "patient": patient_pk, "visit": visit_pk, "new_visit": new_visit,
            "visit_number": visit_data.visit_number if visit_data else "",
            "patient_class": visit_data.patient_class if visit_data else "",
            "assigned_location": visit_data.assigned_location if visit_data else "",
            "visit_referring": visit_data.referring_physician_name if visit_data else "",
            "admit": visit_data.admit_datetime if visit_data else None,
            "placer": cmd.placer_order_number, "namespace": cmd.placer_namespace, "filler": cmd.filler_order_number,
            "order_control": cmd.order_control, "order_status": cmd.order_status,
            "ordering_provider": cmd.ordering_provider[:320], "referring": cmd.referring_physician_name[:320],
            "reason": cmd.reason_for_study, "sending_application": cmd.sending_application[:180],
            "sending_facility": cmd.sending_facility[:180], "rp_status": states.RP_SCHEDULED,
            "sps_status": states.SPS_SCHEDULED,
        })
        order_pk, _, procedure_pks = cursor.fetchone()
    _audit_order(cmd, events.CREATE, rp["rp_accessions"])
    return {"order": order_pk, "patient": patient_pk, "procedures": list(procedure_pks),
            "accession_numbers": rp["rp_accessions"]}


def _create_procedure(order: Order, data: ProcedureData, cmd: OrderCommand, to_status: str) -> RequestedProcedure:
    accession = data.accession_number
    assigned = not accession
    if assigned:
        accession = identifiers.new_accession_number()
    elif RequestedProcedure.objects.filter(accession_number=accession).exists():
        raise DuplicateKey(f"accession number {accession} is already used", location=f"{data.location}^18")
    uid = data.study_instance_uid or identifiers.new_study_instance_uid()
    if data.study_instance_uid and RequestedProcedure.objects.filter(study_instance_uid=uid).exists():
        raise DuplicateKey(f"Study Instance UID {uid} is already used", location=f"{data.location}^1")
    rp = RequestedProcedure.objects.create(
        order=order, requested_procedure_id=(data.requested_procedure_id or accession)[:16],
        requested_procedure_description=data.requested_procedure_description,
        procedure_code_value=data.procedure_code_value, procedure_code_scheme=data.procedure_code_scheme,
        procedure_code_meaning=data.procedure_code_meaning,
        requested_procedure_priority=data.requested_procedure_priority or states.PRIORITY_ROUTINE,
        study_instance_uid=uid, accession_number=accession,
        accession_number_issuer=settings.ACCESSION_NUMBER_ISSUER if assigned else "",
        accession_assigned_by_us=assigned,
    )
    _create_steps(rp, data, used=set())
    if to_status != states.SPS_SCHEDULED:
        _set_status(rp, to_status, cmd)
    return rp


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


def _create_steps(rp: RequestedProcedure, data: ProcedureData, used: set[str] | None = None) -> None:
    if used is None:
        used = set(rp.steps.values_list("scheduled_procedure_step_id", flat=True))
    now = timezone.now()
    rows = []
    for step, sps_id in zip(data.steps, step_ids(rp.requested_procedure_id, data, used), strict=True):
        rows.append(ScheduledProcedureStep(
            requested_procedure=rp, scheduled_procedure_step_id=sps_id, modality=step.modality,
            scheduled_station_ae_title=step.scheduled_station_ae_title,
            scheduled_station_name=step.scheduled_station_name,
            scheduled_procedure_step_location=step.scheduled_procedure_step_location,
            scheduled_start=step.scheduled_start or now,
            scheduled_procedure_step_description=step.scheduled_procedure_step_description,
            protocol_code_value=step.protocol_code_value, protocol_code_scheme=step.protocol_code_scheme,
            protocol_code_meaning=step.protocol_code_meaning,
        ))
    if rows:
        ScheduledProcedureStep.objects.bulk_create(rows)


def _set_status(rp: RequestedProcedure, to_status: str, cmd: OrderCommand) -> list[int]:
    """Move every step of ``rp`` to ``to_status`` (through the transition table), then the procedure."""
    changed = []
    for step in rp.steps.select_for_update().order_by("pk"):
        if transition(step, to_status, entity="sps", cause=cmd.cause, actor=cmd.sending_application[:150]):
            changed.append(step.pk)
    rp_status = _STEP_TO_RP.get(to_status, states.RP_SCHEDULED)
    if rp.status != rp_status and (rp.status, rp_status) in states.RP_TRANSITIONS:
        transition(rp, rp_status, entity="requested_procedure", cause=cmd.cause, actor=cmd.sending_application[:150])
    return changed


def _matching_procedures(order: Order, cmd: OrderCommand, *, add_missing: bool) -> list[RequestedProcedure]:
    """The procedures a status message is about: those named by accession number or requested
    procedure ID (OBR-18/19, IPC-1/2), else all of the order."""
    existing = list(order.procedures.select_for_update().order_by("pk"))
    named = [p for p in cmd.procedures if p.accession_number or p.requested_procedure_id]
    if not named:
        return existing
    result = []
    for data in named:
        match = next((rp for rp in existing if (data.accession_number and rp.accession_number == data.accession_number)
                      or (not data.accession_number and rp.requested_procedure_id == data.requested_procedure_id)),
                     None)
        if match is None:
            if not add_missing:
                raise UnknownKey(f"procedure {data.accession_number or data.requested_procedure_id} is not part of "
                                 f"order {order}", location=f"{data.location}^{18 if data.accession_number else 19}")
            match = _create_procedure(order, data, cmd, states.SPS_SCHEDULED)
        result.append(match)
    return result


def replace_order(order: Order, cmd: OrderCommand, to_status: str) -> dict:
    """XO: change the order (procedure text, priority, steps' modality and start), then its status."""
    for name in ("ordering_provider", "referring_physician_name", "reason_for_study"):
        value = getattr(cmd, name)
        if value:
            setattr(order, name, value)
    if cmd.filler_order_number and not order.filler_order_number:
        order.filler_order_number = cmd.filler_order_number
    order.order_control, order.order_status = cmd.order_control, cmd.order_status
    order.save()
    procs = _matching_procedures(order, cmd, add_missing=True)
    by_pk = {p.pk: p for p in procs}
    for data in cmd.procedures:
        rp = next((p for p in by_pk.values() if p.accession_number == data.accession_number
                   or (not data.accession_number and p.requested_procedure_id == data.requested_procedure_id)), None)
        if rp is None and len(procs) == 1:
            rp = procs[0]
        if rp is None:
            continue
        for name in ("requested_procedure_description", "procedure_code_value", "procedure_code_scheme",
                     "procedure_code_meaning", "requested_procedure_priority"):
            value = getattr(data, name)
            if value:
                setattr(rp, name, value)
        rp.save()
        for step_data in data.steps:
            for step in rp.steps.filter(status__in=[states.SPS_SCHEDULED, states.SPS_ARRIVED, states.SPS_READY]):
                if step_data.scheduled_procedure_step_id and step.scheduled_procedure_step_id != \
                        step_data.scheduled_procedure_step_id:
                    continue
                for name in ("modality", "scheduled_station_ae_title", "scheduled_start",
                             "scheduled_procedure_step_description"):
                    value = getattr(step_data, name)
                    if value:
                        setattr(step, name, value)
                step.save()
    changed = [pk for rp in procs for pk in _set_status(rp, to_status, cmd)]
    for rp in procs:
        procedure_changed.send(sender=RequestedProcedure, requested_procedure_id=rp.pk)
    _audit_order(cmd, events.UPDATE, [p.accession_number for p in procs],
                 {"to_status": to_status, "steps_changed": changed})
    return {"order": order.pk, "procedures": [p.pk for p in procs], "steps_changed": changed,
            "accession_numbers": [p.accession_number for p in procs]}


def change_order_status(order: Order, cmd: OrderCommand, to_status: str) -> dict:
    """SC (status changed), CA (cancel), DC (discontinue): steps to the mapped status."""
    order.order_control, order.order_status = cmd.order_control, cmd.order_status
    order.save(update_fields=["order_control", "order_status", "updated_at"])
    procs = _matching_procedures(order, cmd, add_missing=False)
    changed = [pk for rp in procs for pk in _set_status(rp, to_status, cmd)]
    _audit_order(cmd, events.UPDATE, [p.accession_number for p in procs],
                 {"to_status": to_status, "steps_changed": changed})
    return {"order": order.pk, "procedures": [p.pk for p in procs], "steps_changed": changed,
            "accession_numbers": [p.accession_number for p in procs]}


def cancel_order(order: Order, cmd: OrderCommand) -> dict:
    return change_order_status(order, cmd, states.SPS_CANCELED)


def discontinue_order(order: Order, cmd: OrderCommand) -> dict:
    return change_order_status(order, cmd, states.SPS_DISCONTINUED)


def complete_order(order: Order, cmd: OrderCommand) -> dict:
    return change_order_status(order, cmd, states.SPS_COMPLETED)
