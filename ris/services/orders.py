"""Orders: place, replace, status change, cancel, discontinue, complete (IHE RAD-2/RAD-4/RAD-13).

ORC-1 (order control) + ORC-5 (order status) give the target status of the scheduled steps
through ``ris.states.ORDER_CONTROL_TO_SPS_STATUS`` (HL7 v2.5.1 tables 0119 and 0038, as
dcm4chee maps them by default).  Identifiers we assign come from ``ris.services.identifiers``; statuses change only
through ``ris.services.transitions.transition``.  Called inside the caller's transaction.

A new order (NW, the hot path of the HL7 intake) is decided by ``ris.services.plans`` and
written by the writer of the database kind (``ris.services.writers``: PostgreSQL statements, or
the ORM).

A filler order (ORC-1 SN, HL7 v2.5.1 4.5.1.1) is one the department creates itself
(``create_filler_order``); the placer order number the order placer then assigns (its answer,
ORC-1 NA) is stored by ``assign_placer_order_number``, after which the placer's own messages
about the order (ORC-2) find it.
"""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

from project.auditing import events
from ris import auditing, states
from ris.commands import OrderCommand, ProcedureData
from ris.errors import DuplicateKey, InvalidTransition, OrderCancelled, TableValueNotFound, UnknownKey
from ris.models import Order, Patient, RequestedProcedure, ScheduledProcedureStep
from ris.services import patients, plans, writers
from ris.services.identifiers import new_accession_number
from ris.services.transitions import transition
from ris.signals import filler_order_created, procedure_changed, procedures_ordered

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
    if cmd.order_control == "XO":
        _refuse_change_of_closed(order, cmd)  # before the patient's demographics are touched
    if order.patient.merged_into_id is None:
        patients.register(cmd.patient, None)
    if cmd.order_control == "XO":
        return replace_order(order, cmd, to_status)
    return change_order_status(order, cmd, to_status)


def place_order(cmd: OrderCommand, to_status: str = states.SPS_SCHEDULED) -> dict:
    """NW: a new order with its patient, visit, requested procedures and scheduled steps.

    What the database holds is read once, ``plans.new_order_plan`` decides (identifiers to
    assign, errors to answer) and the writer of the connection's database writes the plan.
    """
    store = writers.current()
    plan, written = writers.decide_and_write(
        lambda: store.read_new_order(cmd),
        lambda seen: plans.new_order_plan(cmd, to_status, seen, now=timezone.now()),
        store.write_new_order)
    if to_status != states.SPS_SCHEDULED:
        for rp in RequestedProcedure.objects.filter(pk__in=written["procedures"]).order_by("pk"):
            _set_status(rp, to_status, cmd)
    if written["procedures"]:
        procedures_ordered.send(sender=RequestedProcedure, requested_procedure_ids=list(written["procedures"]))
    return {**written, "accession_numbers": plan.accession_numbers}


def _add_procedure(order: Order, data: ProcedureData) -> RequestedProcedure:
    """A procedure an XO names that the order does not have yet: planned like those of a new order."""
    (proc,) = plans.procedure_plans([data], **writers.orm.read_procedure_keys([data]), now=timezone.now())
    (rp,) = writers.orm.create_procedures(order.pk, [proc])
    return rp


def _set_status(rp: RequestedProcedure, to_status: str, cmd: OrderCommand) -> list[int]:
    """Move every step of ``rp`` to ``to_status`` (through the transition table), then the procedure."""
    changed = []
    for step in rp.steps.select_for_update().order_by("pk"):
        if transition(step, to_status, entity="sps", cause=cmd.cause, actor=cmd.sending_application[:150],
                      placer_request=True):
            changed.append(step.pk)
    rp_status = _STEP_TO_RP.get(to_status, states.RP_SCHEDULED)
    if rp.status != rp_status and (rp.status, rp_status) in states.RP_TRANSITIONS:
        transition(rp, rp_status, entity="requested_procedure", cause=cmd.cause, actor=cmd.sending_application[:150],
                   placer_request=True)
    return changed


def _names(data: ProcedureData, rp: RequestedProcedure) -> bool:
    """Whether an OBR / IPC names ``rp``: by accession number, else by requested procedure ID."""
    if data.accession_number:
        return rp.accession_number == data.accession_number
    return rp.requested_procedure_id == data.requested_procedure_id


def _matching_procedures(order: Order, cmd: OrderCommand, *, add_missing: bool) -> list[RequestedProcedure]:
    """The procedures a status message is about: those named by accession number or requested
    procedure ID (OBR-18/19, IPC-1/2), else all of the order."""
    existing = list(order.procedures.select_for_update().order_by("pk"))
    named = [p for p in cmd.procedures if p.accession_number or p.requested_procedure_id]
    if not named:
        return existing
    result = []
    for data in named:
        match = next((rp for rp in existing if _names(data, rp)), None)
        if match is None:
            if not add_missing:
                raise UnknownKey(f"procedure {data.accession_number or data.requested_procedure_id} is not part of "
                                 f"order {order}", location=f"{data.location}^{18 if data.accession_number else 19}")
            match = _add_procedure(order, data)
        result.append(match)
    return result


def _why_closed(rp: RequestedProcedure) -> str:
    """What closed ``rp`` for a change: the placer's CA or DC (before or after the exam), or its
    workflow status CANCELED; empty while it is open."""
    if rp.placer_status == states.PLACER_CANCELED:
        return "placer cancelled it (CA)"
    if rp.placer_status == states.PLACER_DISCONTINUED:
        return "placer discontinued it (DC)"
    return "it is cancelled" if rp.status == states.RP_CANCELED else ""


def _refuse_change_of_closed(order: Order, cmd: OrderCommand) -> None:
    """An XO may not change a procedure the placer cancelled or discontinued, nor add one to an
    order whose every procedure is: refused before anything is written (``OrderCancelled``, AE
    207 at ORC-1), the placer status left as it is.  HL7 v2.5.1 4.5.1 and table 0119: a cancelled
    order is not changed back; the filler's answer to such a change is UX (unable to change), and
    the placer orders again (NW)."""
    existing = list(order.procedures.select_for_update().order_by("pk"))
    closed = {rp.pk: why for rp in existing if (why := _why_closed(rp))}
    if not closed:
        return
    named = [p for p in cmd.procedures if p.accession_number or p.requested_procedure_id]
    targets = [rp for rp in existing if any(_names(data, rp) for data in named)] if named else existing
    refused = [rp for rp in targets if rp.pk in closed]
    if not refused and len(closed) == len(existing):
        refused = existing  # a new procedure for an order that is closed as a whole
    if refused:
        rp = refused[0]
        # Within the 80 characters of MSA-3 (v2.3.1) for any accession number (16).
        raise OrderCancelled(f"{rp.accession_number}: {closed[rp.pk]}; XO refused, send a new order (NW)",
                             location=f"{cmd.location}^1")


def replace_order(order: Order, cmd: OrderCommand, to_status: str) -> dict:
    """XO: change the order (procedure text, priority, steps' modality and start), then its status.
    Refused for a procedure the placer cancelled or discontinued (``_refuse_change_of_closed``)."""
    _refuse_change_of_closed(order, cmd)
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
    plans.order_audit(cmd, events.UPDATE, [p.accession_number for p in procs],
                      {"to_status": to_status, "steps_changed": changed}).record()
    return {"order": order.pk, "procedures": [p.pk for p in procs], "steps_changed": changed,
            "accession_numbers": [p.accession_number for p in procs]}


def change_order_status(order: Order, cmd: OrderCommand, to_status: str) -> dict:
    """SC (status changed), CA (cancel), DC (discontinue): steps to the mapped status.

    A CA or DC also sets each named procedure's placer status (``_set_placer_status``).  For a
    procedure whose exam was already performed (``ris.states.RP_PERFORMED``) that is all it
    changes: the images exist and the exam was done, so its steps and workflow status stay; the
    request (ORC-1 CA / DC, HL7 v2.5.1 table 0119) is accepted and shows as a flag on the reading
    worklist, where a final signature then needs a confirmation.
    """
    order.order_control, order.order_status = cmd.order_control, cmd.order_status
    order.save(update_fields=["order_control", "order_status", "updated_at"])
    procs = _matching_procedures(order, cmd, add_missing=False)
    placer_status = states.SPS_TO_PLACER_STATUS.get(to_status)
    changed = []
    for rp in procs:
        if placer_status is None or rp.status not in states.RP_PERFORMED:
            changed += _set_status(rp, to_status, cmd)
        if placer_status is not None:
            _set_placer_status(rp, placer_status, cmd)
    plans.order_audit(cmd, events.UPDATE, [p.accession_number for p in procs],
                      {"to_status": to_status, "steps_changed": changed,
                       **({"placer_status": placer_status} if placer_status else {})}).record()
    return {"order": order.pk, "procedures": [p.pk for p in procs], "steps_changed": changed,
            "accession_numbers": [p.accession_number for p in procs]}


def _set_placer_status(rp: RequestedProcedure, placer_status: str, cmd: OrderCommand) -> None:
    """Record the placer's CA / DC on the procedure (when, by which message) and tell the listeners:
    ``procedure_status_changed`` (entity ``placer_status``: billing's credit for a cancel, IHE
    RAD-35) and ``procedure_changed`` (the reading worklist's flag).  A repeat changes nothing."""
    rp.refresh_from_db(fields=["placer_status"])
    if (rp.placer_status, placer_status) not in states.PLACER_STATUS_TRANSITIONS:
        return  # the same again, or a DC after a CA: the first word stands
    rp.placer_status_at, rp.placer_status_cause = timezone.now(), cmd.cause[:255]
    rp.save(update_fields=["placer_status_at", "placer_status_cause", "updated_at"])
    transition(rp, placer_status, entity="placer_status", field="placer_status", cause=cmd.cause,
               actor=cmd.sending_application[:150], placer_request=True)
    procedure_changed.send(sender=RequestedProcedure, requested_procedure_id=rp.pk)


def cancel_order(order: Order, cmd: OrderCommand) -> dict:
    return change_order_status(order, cmd, states.SPS_CANCELED)


def discontinue_order(order: Order, cmd: OrderCommand) -> dict:
    return change_order_status(order, cmd, states.SPS_DISCONTINUED)


def complete_order(order: Order, cmd: OrderCommand) -> dict:
    return change_order_status(order, cmd, states.SPS_COMPLETED)


# --- filler orders (ORC-1 SN / NA, HL7 v2.5.1 4.5.1.1, table 0119) ------------------------------
def create_filler_order(patient: Patient, *, study_instance_uid: str, description: str, modality: str,
                        performed_at: datetime) -> RequestedProcedure:
    """SN: a new order created by the department for an exam already done (encounter-based
    imaging, an unordered study reconciled to its patient): one requested procedure carrying the
    study's own Study Instance UID, one completed step, an accession number we assign.

    Inside the caller's transaction.  Receivers of ``ris.signals.filler_order_created`` (the HL7
    gateway queues ORM^O01 / OMI^O23 ORC-1 SN to the order placer) write in that transaction."""
    order = Order.objects.create(patient=patient, order_control="SN", created_by_filler=True)
    order.filler_order_number = f"F{order.pk:08d}"
    order.save(update_fields=["filler_order_number"])
    accession = new_accession_number()
    rp = RequestedProcedure.objects.create(
        order=order, requested_procedure_id=accession[-16:], study_instance_uid=study_instance_uid,
        accession_number=accession, accession_assigned_by_us=True,
        requested_procedure_description=description[:64], status=states.RP_COMPLETED,
    )
    ScheduledProcedureStep.objects.create(
        requested_procedure=rp, scheduled_procedure_step_id=accession[-16:], modality=(modality or "OT")[:16],
        scheduled_start=performed_at, status=states.SPS_COMPLETED,
    )
    filler_order_created.send(sender=Order, order_id=order.pk, requested_procedure_id=rp.pk)
    return rp


def assign_placer_order_number(order_id: int, placer_order_number: str, placer_namespace: str = "", *,
                               actor: str) -> Order:
    """NA (number assigned, HL7 table 0119): the order placer answered our filler order with the
    placer order number it assigned (ORC-2, EI: entity identifier ^ namespace ID).  Stored on the
    order, so that its later messages naming that number (ORC-2) find the order; audited as an
    Order Record update (PS3.15 A.5.3.13).  Inside the caller's transaction.

    The same number again changes nothing.  Refused: an order that already has another placer
    number (``InvalidTransition``), a number another order holds (``DuplicateKey``)."""
    if not placer_order_number:
        raise TableValueNotFound("the answer carries no placer order number (ORC-2)", location="ORC^1^2")
    try:
        order = Order.objects.select_for_update().get(pk=order_id)
    except Order.DoesNotExist:
        raise UnknownKey(f"order {order_id} does not exist") from None
    number, namespace = placer_order_number[:64], placer_namespace[:64]
    if (order.placer_order_number, order.placer_namespace) == (number, namespace):
        return order
    if order.placer_order_number:
        raise InvalidTransition(f"order {order.filler_order_number or order.pk} already has placer order number "
                                f"{order.placer_order_number}")
    if Order.objects.filter(placer_order_number=number, placer_namespace=namespace).exclude(pk=order.pk).exists():
        raise DuplicateKey(f"placer order number {number}^{namespace} belongs to another order", location="ORC^1^2")
    order.placer_order_number, order.placer_namespace = number, namespace
    order.save(update_fields=["placer_order_number", "placer_namespace", "updated_at"])
    accessions = list(order.procedures.order_by("pk").values_list("accession_number", flat=True))
    auditing.change(events.ORDER_RECORD, events.UPDATE, patients=auditing.patient_ids(order.patient_id),
                    objects=auditing.order_objects(order, accessions),
                    detail={"placer_order_number_assigned": f"{number}^{namespace}".rstrip("^")}, actor=actor)
    return order
