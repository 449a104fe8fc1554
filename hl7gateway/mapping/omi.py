"""OMI^O23 (HL7 v2.5.1 section 4.4.10; IHE RAD-4/RAD-13) -> ``ris.commands.OrderCommand``.

Structure read: MSH, PID, [PV1], then groups ORC, [TQ1], OBR, {IPC}.  One OBR is one order's
procedure(s); IPC segments sharing IPC-1/IPC-2/IPC-3 are the steps of one requested procedure,
IPC segments with other values are further procedures.  Each IPC is one scheduled step.
"""

from __future__ import annotations

from hl7gateway.mapping.common import (
    cause,
    group_obr,
    parse_ts,
    patient_from_pid,
    priority,
    visit_from_pv1,
    xcn_to_pn,
)
from hl7gateway.mapping.orm import order_control
from hl7gateway.parsing import HL7Error, ParsedMessage
from ris.commands import OrderCommand, ProcedureData, StepData

GROUP_MEMBERS = {"TQ1", "TQ2", "OBR", "IPC", "NTE", "OBX", "DG1", "CTD", "BLG", "FT1", "SPM"}


def map_omi(msg: ParsedMessage) -> list[OrderCommand]:
    patient = patient_from_pid(msg)
    visit = visit_from_pv1(msg)
    groups = msg.groups("ORC", GROUP_MEMBERS)
    if not groups:
        raise HL7Error("OMI^O23 without an ORC segment", code=100, location="ORC")
    commands = []
    obr_index = ipc_index = 0
    for index, group in enumerate(groups, start=1):
        orc = group[0]
        control, status = order_control(orc, index)
        obr = group_obr(group, obr_index)
        tq1 = next((s for s in group if s.id == "TQ1"), None)
        ipcs = [s for s in group if s.id == "IPC"]
        placer = orc.get(2) or (obr.get(2) if obr else "")
        filler = orc.get(3) or (obr.get(3) if obr else "")
        if not placer and not filler:
            raise HL7Error("neither placer (ORC-2) nor filler (ORC-3) order number", code=101,
                           location=f"ORC^{index}^2")
        cmd = OrderCommand(
            order_control=control, order_status=status, patient=patient, visit=visit,
            placer_order_number=placer[:64], placer_namespace=(orc.get(2, 2) or (obr.get(2, 2) if obr else ""))[:64],
            filler_order_number=filler[:64],
            referring_physician_name=visit.referring_physician_name if visit else "",
            sending_application=msg.msh.msh_3, sending_facility=msg.msh.msh_4,
            cause=cause(msg, f"{control}/{status}" if status else control), location=f"ORC^{index}",
        )
        commands.append(cmd)
        if obr is None:
            if control == "NW":
                raise HL7Error("OMI^O23 order group without OBR", code=100, location=f"ORC^{index}")
            continue
        obr_index += 1
        if control == "NW" and not ipcs:
            raise HL7Error("OMI^O23 new order without an IPC segment", code=100, location=f"OBR^{obr_index}")
        cmd.ordering_provider = xcn_to_pn(obr.components(16))
        reason = obr.components(31) + ["", ""]
        cmd.reason_for_study = (reason[1] or reason[0])[:640]
        code = obr.components(4) + ["", "", ""]
        start = parse_ts(tq1.get(7), "TQ1^1^7") if tq1 else None
        prio = priority(tq1.get(9)) if tq1 else ""
        by_key: dict[tuple, ProcedureData] = {}
        for ipc in ipcs:
            ipc_index += 1
            loc = f"IPC^{ipc_index}"
            key = (ipc.get(1), ipc.get(2), ipc.get(3))
            proc = by_key.get(key)
            if proc is None:
                proc = by_key[key] = ProcedureData(
                    requested_procedure_id=ipc.get(2)[:16], accession_number=ipc.get(1)[:16],
                    study_instance_uid=ipc.get(3)[:64], procedure_code_value=code[0][:64],
                    procedure_code_meaning=code[1][:128], procedure_code_scheme=code[2][:64],
                    requested_procedure_description=code[1][:64], requested_procedure_priority=prio, location=loc,
                )
                cmd.procedures.append(proc)
            modality = ipc.get(5).upper()
            if control == "NW" and not modality:
                raise HL7Error("IPC-5 modality is missing", code=101, location=f"{loc}^5")
            protocol = ipc.components(6) + ["", "", ""]
            proc.steps.append(StepData(
                scheduled_procedure_step_id=ipc.get(4)[:16], modality=modality[:16],
                scheduled_station_ae_title=ipc.get(9)[:16], scheduled_station_name=ipc.get(7)[:16],
                scheduled_procedure_step_location=ipc.get(8)[:16], scheduled_start=start,
                scheduled_procedure_step_description=(protocol[1] or code[1])[:64],
                protocol_code_value=protocol[0][:64], protocol_code_meaning=protocol[1][:128],
                protocol_code_scheme=protocol[2][:64],
            ))
        if not ipcs:  # status-only message (CA, DC, SC, XO without IPC): the whole order
            pass
    return commands
