"""ADT (HL7 v2.5.1 chapter 3; IHE RAD-1 patient registration, RAD-12 patient update).

A01 admit, A04 register, A05 pre-admit -> ``RegisterPatient``; A08 update -> ``UpdatePatient``;
A40 merge patient identifier list -> ``MergePatients`` (PID-3 survivor, MRG-1 retired), one per
PID/MRG pair.
"""

from __future__ import annotations

from hl7gateway.mapping.common import cause, identities, parse_date, patient_from_pid, sex, visit_from_pv1, xpn_to_pn
from hl7gateway.parsing import HL7Error, ParsedMessage
from ris.commands import MergePatients, PatientData, RegisterPatient, UpdatePatient

REGISTER_EVENTS = {"A01", "A04", "A05"}


def map_adt(msg: ParsedMessage) -> list:
    event = msg.msh.trigger_event
    if event in REGISTER_EVENTS:
        return [RegisterPatient(patient=patient_from_pid(msg), visit=visit_from_pv1(msg), cause=cause(msg))]
    if event == "A08":
        return [UpdatePatient(patient=patient_from_pid(msg), visit=visit_from_pv1(msg), cause=cause(msg))]
    if event == "A40":
        commands = []
        pairs = msg.groups("PID", {"PD1", "MRG", "PV1"})
        if not pairs:
            raise HL7Error("A40 without PID", code=100, location="PID")
        for i, group in enumerate(pairs, start=1):
            pid = group[0]
            mrg = next((s for s in group if s.id == "MRG"), None)
            if mrg is None:
                raise HL7Error("A40 PID without MRG", code=100, location=f"MRG^{i}")
            survivor = PatientData(
                identifiers=identities(pid, 3, f"PID^{i}^3"), patient_name=xpn_to_pn(pid.components(5)),
                patient_birth_date=parse_date(pid.get(7), f"PID^{i}^7"), patient_sex=sex(pid.get(8)),
            )
            retired = identities(mrg, 1, f"MRG^{i}^1")[0]
            commands.append(MergePatients(survivor=survivor, retired=retired, cause=cause(msg)))
        return commands
    raise HL7Error(f"ADT event {event or '(empty)'} is not supported", code=201, location="MSH^1^9^2", ack_code="AR")
