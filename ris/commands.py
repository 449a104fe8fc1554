"""Plain commands the adapters hand to the domain services (thin adapters; docs/architecture.md).

The HL7 mapping (``hl7gateway.mapping``) builds these from ORM^O01, OMI^O23 and ADT messages;
``ris.services.patients`` and ``ris.services.orders`` apply them.  No HL7 or DICOM objects here:
only strings, dates and lists.  Field comments name where the value comes from (HL7 field,
DICOM attribute; docs/hl7-interface.md 1.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime


@dataclass(frozen=True)
class PatientIdentity:
    """PID-3 (or MRG-1) repetition: PatientID + IssuerOfPatientID."""

    id_number: str  # PID-3.1
    assigning_authority: str = ""  # PID-3.4
    identifier_type_code: str = ""  # PID-3.5

    def __str__(self) -> str:
        return f"{self.id_number}^^^{self.assigning_authority}" if self.assigning_authority else self.id_number


@dataclass
class PatientData:
    identifiers: list[PatientIdentity]  # PID-3 repetitions; the first is the primary one
    patient_name: str = ""  # PID-5 as DICOM PN (family^given^middle^prefix^suffix)
    patient_birth_date: date | None = None  # PID-7
    patient_sex: str = ""  # PID-8: M, F, O or empty

    @property
    def primary(self) -> PatientIdentity:
        return self.identifiers[0]


@dataclass
class VisitData:
    visit_number: str  # PV1-19, else PID-18
    patient_class: str = ""  # PV1-2
    assigned_location: str = ""  # PV1-3
    referring_physician_name: str = ""  # PV1-8 as DICOM PN
    admit_datetime: datetime | None = None  # PV1-44


@dataclass
class StepData:
    scheduled_procedure_step_id: str  # OBR-20 / IPC-4 (empty: copy the requested procedure ID)
    modality: str  # OBR-24 / IPC-5
    scheduled_station_ae_title: str = ""  # IPC-9, or the site rule HL7_STATION_AE_BY_MODALITY
    scheduled_station_name: str = ""  # IPC-7 (OMI)
    scheduled_procedure_step_location: str = ""  # IPC-8 (OMI)
    scheduled_start: datetime | None = None  # ORC-7.4 / OBR-27.4 / TQ1-7
    scheduled_procedure_step_description: str = ""  # OBR-4.2 / IPC-6.2
    protocol_code_value: str = ""  # IPC-6.1
    protocol_code_scheme: str = ""  # IPC-6.3
    protocol_code_meaning: str = ""  # IPC-6.2


@dataclass
class ProcedureData:
    requested_procedure_id: str  # OBR-19 / IPC-2 (empty: the accession number)
    accession_number: str = ""  # OBR-18 / IPC-1 (empty: we assign one)
    study_instance_uid: str = ""  # ZDS-1 / IPC-3 (empty: we generate one)
    procedure_code_value: str = ""  # OBR-4.1
    procedure_code_meaning: str = ""  # OBR-4.2
    procedure_code_scheme: str = ""  # OBR-4.3
    requested_procedure_description: str = ""  # OBR-4.2 (or OBR-44.2)
    requested_procedure_priority: str = ""  # ORC-7.6 / TQ1-9 mapped to DICOM (empty: ROUTINE)
    steps: list[StepData] = field(default_factory=list)
    location: str = ""  # where in the message, for error locations, e.g. "OBR^2"


@dataclass
class OrderCommand:
    """One order (one ORC-2 placer number) of an ORM^O01 / OMI^O23."""

    order_control: str  # ORC-1: NW, SC, XO, CA, DC
    order_status: str  # ORC-5 (may be empty)
    patient: PatientData
    placer_order_number: str = ""  # ORC-2.1 (else OBR-2.1)
    placer_namespace: str = ""  # ORC-2.2
    filler_order_number: str = ""  # ORC-3.1 (else OBR-3.1)
    visit: VisitData | None = None
    ordering_provider: str = ""  # OBR-16 as DICOM PN
    referring_physician_name: str = ""  # PV1-8 as DICOM PN
    reason_for_study: str = ""  # OBR-31
    procedures: list[ProcedureData] = field(default_factory=list)
    sending_application: str = ""  # MSH-3
    sending_facility: str = ""  # MSH-4
    cause: str = ""  # e.g. "HL7 ORM^O01 NW MSG00012", recorded with every status change
    location: str = "ORC^1"  # the ORC of this order, for error locations


@dataclass
class RegisterPatient:
    """ADT A01 (admit), A04 (register), A05 (pre-admit): create or update the patient."""

    patient: PatientData
    visit: VisitData | None = None
    cause: str = ""


@dataclass
class UpdatePatient:
    """ADT A08: update demographics on the patient and on its open orders."""

    patient: PatientData
    visit: VisitData | None = None
    cause: str = ""


@dataclass
class MergePatients:
    """ADT A40: merge the retired identity (MRG-1) into the survivor (PID-3)."""

    survivor: PatientData
    retired: PatientIdentity
    cause: str = ""
