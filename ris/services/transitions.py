"""The one function that changes a status: the allowed changes are data (``ris.states``), and
every change is recorded with who made it and when."""

from __future__ import annotations

from django.db import models

from project.auditing import events
from ris import auditing, states
from ris.errors import InvalidTransition
from ris.models import PatientIdentifier, StatusChange
from ris.signals import procedure_status_changed


def transition(obj: models.Model, to_status: str, *, entity: str, cause: str, actor: str = "",
               field: str = "status", placer_request: bool = False) -> bool:
    """Move ``obj`` to ``to_status`` if ``ris.states.TABLES[entity]`` allows it.

    Records a ``StatusChange`` (from, to, cause, actor, time) and saves the object.
    Returns False (and records nothing) when the object already has that status;
    raises ``InvalidTransition`` for a pair the table does not list.  Call it inside
    the caller's transaction, on a row the caller has locked (select_for_update) when
    concurrent changes are possible.

    A change of something that belongs to one requested procedure is announced with
    ``ris.signals.procedure_status_changed`` in that transaction (``placer_request``: the order
    placer asked for it, so it needs no status message back).
    """
    current = getattr(obj, field)
    if current == to_status:
        return False
    if (current, to_status) not in states.TABLES[entity]:
        raise InvalidTransition(f"{entity} {obj.pk}: {current} -> {to_status} is not allowed")
    setattr(obj, field, to_status)
    update_fields = [field]
    if any(f.name == "updated_at" for f in obj._meta.fields):
        update_fields.append("updated_at")
    obj.save(update_fields=update_fields)
    StatusChange.objects.create(
        entity=entity, object_id=obj.pk, from_status=current, to_status=to_status, cause=cause[:255],
        actor=actor[:150],
    )
    _audit(obj, entity, current, to_status, cause, actor)
    procedure_id = obj.pk if entity in _PROCEDURE_ENTITIES else getattr(obj, "requested_procedure_id", None)
    if procedure_id is not None:
        procedure_status_changed.send(
            sender=type(obj), entity=entity, object_id=obj.pk, requested_procedure_id=procedure_id,
            from_status=current, to_status=to_status, placer_request=placer_request,
        )
    return True


# Entities whose row is the requested procedure itself (its workflow status, its placer status).
_PROCEDURE_ENTITIES = frozenset({"requested_procedure", "placer_status"})
# Status changes audited as Procedure Record U (PS3.15 A.5.3.15): a step or a requested procedure
# of a patient; the report's and the transfer's own changes are audited where they happen.
_AUDITED = {"sps", "requested_procedure", "placer_status"}


def _audit(obj, entity: str, from_status: str, to_status: str, cause: str, actor: str) -> None:
    if entity not in _AUDITED:
        return
    path = "patient__orders__procedures" if entity in _PROCEDURE_ENTITIES else "patient__orders__procedures__steps"
    patients = PatientIdentifier.objects.filter(**{path: obj.pk}).values_list("id_number", "assigning_authority")
    auditing.change(events.PROCEDURE_RECORD, events.UPDATE, patients=list(patients),
                    objects=[{"type": entity, "id": str(obj.pk)}],
                    detail={"status": {"old": from_status, "new": to_status}, "cause": cause[:255]}, actor=actor)


def history(entity: str, object_id: int):
    return StatusChange.objects.filter(entity=entity, object_id=object_id).order_by("at", "pk")
