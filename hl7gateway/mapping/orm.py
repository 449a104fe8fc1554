"""ORM^O01 (HL7 v2.3.1 section 4.2; IHE RAD-2/RAD-4) -> ``ris.commands.OrderCommand``.

Structure read: MSH, PID, [PV1], then one or more groups ORC, [OBR], [ZDS], ... (NTE, OBX,
DG1 ignored; a second OBR in a group is refused).  Each ORC/OBR group is one requested procedure; groups with the same placer
order number (ORC-2, else OBR-2) form one order.  Fields: docs/hl7-interface.md 1.4.
"""

from __future__ import annotations

from hl7gateway.mapping.common import (
    cause,
    group_obr,
    patient_from_pid,
    priority,
    station_ae_for,
    visit_from_pv1,
    xcn_to_pn,
)
from hl7gateway.mapping.common import parse_ts as _ts
from hl7gateway.parsing import HL7Error, ParsedMessage, Segment
from ris.commands import OrderCommand, ProcedureData, StepData
from ris.states import ORDER_CONTROL_TO_SPS_STATUS

GROUP_MEMBERS = {"OBR", "ZDS", "NTE", "OBX", "DG1", "CTI", "BLG", "RQD", "RQ1", "ODS", "ODT", "FT1", "TQ1"}


def order_control(orc: Segment, index: int) -> tuple[str, str]:
    """ORC-1 + ORC-5, checked against ``ris.states.ORDER_CONTROL_TO_SPS_STATUS``.

    An unknown pair is an application error: AE, ERR-3 101 (HL7 table 0357) at ORC-1
    (docs/hl7-interface.md 1.5).
    """
    control, status = orc.get(1).upper(), orc.get(5).upper()
    if not control:
        raise HL7Error("ORC-1 order control is missing", code=101, location=f"ORC^{index}^1")
    if (control, status) not in ORDER_CONTROL_TO_SPS_STATUS:
        raise HL7Error(f"order control {control}/{status or '(empty)'} (ORC-1/ORC-5) is not supported",
                       code=101, location=f"ORC^{index}^1")
    return control, status


def map_orm(msg: ParsedMessage) -> list[OrderCommand]:
    patient = patient_from_pid(msg)
    visit = visit_from_pv1(msg)
    referring = visit.referring_physician_name if visit else ""
    groups = msg.groups("ORC", GROUP_MEMBERS)
    if not groups:
        raise HL7Error("ORM^O01 without an ORC segment", code=100, location="ORC")
    orders: dict[tuple, OrderCommand] = {}
    obr_index = 0
    for index, group in enumerate(groups, start=1):
        orc = group[0]
        control, status = order_control(orc, index)
        obr = group_obr(group, obr_index)
        zds = next((s for s in group if s.id == "ZDS"), None)
        if obr is not None:
            obr_index += 1
        placer = orc.get(2) or (obr.get(2) if obr else "")
        namespace = orc.get(2, 2) or (obr.get(2, 2) if obr else "")
        filler = orc.get(3) or (obr.get(3) if obr else "")
        if not placer and not filler:
            raise HL7Error("neither placer (ORC-2) nor filler (ORC-3) order number", code=101,
                           location=f"ORC^{index}^2")
        key = (control, namespace, placer, filler)
        cmd = orders.get(key)
        if cmd is None:
            cmd = orders[key] = OrderCommand(
                order_control=control, order_status=status, patient=patient, visit=visit,
                placer_order_number=placer[:64], placer_namespace=namespace[:64], filler_order_number=filler[:64],
                referring_physician_name=referring, sending_application=msg.msh.msh_3,
                sending_facility=msg.msh.msh_4, cause=cause(msg, f"{control}/{status}" if status else control),
                location=f"ORC^{index}",
            )
        if obr is None:
            if control == "NW":
                raise HL7Error("new order without an OBR segment", code=100, location=f"ORC^{index}")
            continue
        loc = f"OBR^{obr_index}"
        cmd.ordering_provider = cmd.ordering_provider or xcn_to_pn(obr.components(16))
        reason = obr.components(31)
        cmd.reason_for_study = cmd.reason_for_study or ((reason[1] if len(reason) > 1 and reason[1] else "")
                                                        or (reason[0] if reason else ""))[:640]
        code = obr.components(4) + ["", "", ""]
        code44 = obr.components(44) + ["", "", ""]
        modality = obr.get(24).upper()
        if control == "NW" and not modality:
            raise HL7Error("OBR-24 diagnostic service section (modality) is missing", code=101, location=f"{loc}^24")
        start = (_ts(orc.get(7, 4), f"ORC^{index}^7^4") or _ts(obr.get(27, 4), f"{loc}^27^4"))
        prio = priority(orc.get(7, 6) or obr.get(27, 6))
        description = (code[1] or code44[1])[:64]
        rp_id = obr.get(19)[:16]
        cmd.procedures.append(ProcedureData(
            requested_procedure_id=rp_id,
            accession_number=obr.get(18)[:16],
            study_instance_uid=(zds.get(1) if zds else "")[:64],
            procedure_code_value=(code[0] or code44[0])[:64],
            procedure_code_meaning=(code[1] or code44[1])[:128],
            procedure_code_scheme=(code[2] or code44[2])[:64],
            requested_procedure_description=description,
            requested_procedure_priority=prio,
            steps=[StepData(
                scheduled_procedure_step_id=obr.get(20)[:16],
                modality=modality[:16],
                scheduled_station_ae_title=station_ae_for(modality),
                scheduled_start=start,
                scheduled_procedure_step_description=description,
            )] if modality or control == "NW" else [],
            location=loc,
        ))
    return list(orders.values())
