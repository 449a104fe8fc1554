"""The RIS domain: patients, visits, orders, requested procedures, scheduled steps.

Field names follow the standards: a column that holds a DICOM attribute carries its
keyword in snake case (``accession_number`` = AccessionNumber (0008,0050)); a column
filled from HL7 says where from in its help text (``PID-3.1``).  Mapping rules are in
docs/hl7-interface.md (1.4, fields read) and docs/dicom-conformance.md (5.2, MWL keys).

Statuses are changed only through ``ris.services.transitions.transition`` which checks
``ris.states`` and writes a ``StatusChange`` row.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from ris import states


class Patient(models.Model):
    """A person, with one or more identifiers (PID-3 repetitions) each under an issuer."""

    # PatientName (0010,0010) in DICOM PN form: family^given^middle^prefix^suffix.
    patient_name = models.CharField(max_length=320, blank=True, help_text="PID-5 as DICOM PN")
    patient_birth_date = models.DateField(null=True, blank=True, help_text="PID-7")
    patient_sex = models.CharField(max_length=1, blank=True, help_text="PID-8: M, F, O or empty")
    # Set when this patient was retired by an A40 merge; its identifiers moved to the survivor.
    merged_into = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    patient_weight = models.DecimalField(max_digits=6, decimal_places=2, null=True, blank=True)
    medical_alerts = models.CharField(max_length=640, blank=True)
    allergies = models.CharField(max_length=640, blank=True)
    pregnancy_status = models.PositiveSmallIntegerField(null=True, blank=True, help_text="(0010,21C0) 1,2,3,4")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["patient_name"])]

    def __str__(self) -> str:
        primary = self.identifiers.first()
        return f"{self.patient_name} ({primary})" if primary else self.patient_name

    def current_identifiers(self):
        """Identifiers that may stand for this patient: all but those retired into it by an
        A40 merge (MRG-1), which stay only so that late messages with the old ID still resolve."""
        return self.identifiers.exclude(retired_by_merge()).order_by("pk")

    @property
    def primary_identifier(self) -> PatientIdentifier | None:
        """PatientID (0010,0020) + IssuerOfPatientID we show and send: the oldest current identifier."""
        return self.current_identifiers().first() or self.identifiers.order_by("pk").first()


class PatientIdentifier(models.Model):
    """PID-3: ID (PID-3.1) under an assigning authority (PID-3.4) = PatientID + IssuerOfPatientID."""

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="identifiers")
    # CX component names (HL7 2.A.14): ID Number, Assigning Authority, Identifier Type Code.
    id_number = models.CharField(max_length=64, help_text="PID-3.1 = PatientID (0010,0020)")
    assigning_authority = models.CharField(
        max_length=64, blank=True, help_text="PID-3.4 = IssuerOfPatientID (0010,0021)"
    )
    identifier_type_code = models.CharField(max_length=10, blank=True, help_text="PID-3.5, e.g. MR")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["assigning_authority", "id_number"], name="uniq_patient_id_per_issuer")
        ]
        indexes = [models.Index(fields=["id_number"])]

    def __str__(self) -> str:
        return f"{self.id_number}^^^{self.assigning_authority}" if self.assigning_authority else self.id_number


class Visit(models.Model):
    """PV1: the encounter.  visit_number is PV1-19 (else PID-18) = AdmissionID (0038,0010)."""

    patient = models.ForeignKey(Patient, on_delete=models.CASCADE, related_name="visits")
    visit_number = models.CharField(max_length=64, help_text="PV1-19 (else PID-18)")
    patient_class = models.CharField(max_length=4, blank=True, help_text="PV1-2: I, O, E ...")
    assigned_location = models.CharField(max_length=120, blank=True, help_text="PV1-3")
    referring_physician_name = models.CharField(max_length=320, blank=True, help_text="PV1-8 as DICOM PN")
    admit_datetime = models.DateTimeField(null=True, blank=True, help_text="PV1-44")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["patient", "visit_number"], name="uniq_visit_per_patient")]
        indexes = [models.Index(fields=["visit_number"])]

    def __str__(self) -> str:
        return self.visit_number


class Order(models.Model):
    """An imaging order (ORC).  Placer number = ORC-2 (also OBR-2), filler number = ORC-3."""

    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="orders")
    visit = models.ForeignKey(Visit, null=True, blank=True, on_delete=models.SET_NULL, related_name="orders")
    placer_order_number = models.CharField(max_length=64, blank=True, help_text="ORC-2.1 / (0040,2016)")
    placer_namespace = models.CharField(max_length=64, blank=True, help_text="ORC-2.2 entity namespace")
    filler_order_number = models.CharField(max_length=64, blank=True, help_text="ORC-3.1 / (0040,2017)")
    order_control = models.CharField(max_length=2, blank=True, help_text="ORC-1 of the last message applied")
    order_status = models.CharField(max_length=2, blank=True, help_text="ORC-5 of the last message applied")
    ordering_provider = models.CharField(max_length=320, blank=True, help_text="OBR-16 / RequestingPhysician")
    referring_physician_name = models.CharField(max_length=320, blank=True, help_text="PV1-8")
    reason_for_study = models.CharField(max_length=640, blank=True, help_text="OBR-31 / (0040,1002)")
    sending_application = models.CharField(max_length=180, blank=True, help_text="MSH-3 of the placing message")
    sending_facility = models.CharField(max_length=180, blank=True, help_text="MSH-4 of the placing message")
    # SN: filler-created order, e.g. encounter-based imaging with no prior order.
    created_by_filler = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["placer_namespace", "placer_order_number"],
                condition=~Q(placer_order_number=""),
                name="uniq_placer_order_number",
            ),
            models.UniqueConstraint(
                fields=["filler_order_number"], condition=~Q(filler_order_number=""), name="uniq_filler_order_number"
            ),
        ]

    def __str__(self) -> str:
        return self.placer_order_number or self.filler_order_number or f"order {self.pk}"


class RequestedProcedure(models.Model):
    """One requested procedure = one study = one accession number (IHE SWF).

    An ORM^O01 group ORC/OBR or the OBR of an OMI^O23 becomes one of these.
    """

    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="procedures")
    requested_procedure_id = models.CharField(max_length=16, help_text="OBR-19 / IPC-2 / (0040,1001)")
    requested_procedure_description = models.CharField(max_length=64, blank=True, help_text="OBR-4.2 / (0032,1060)")
    procedure_code_value = models.CharField(max_length=64, blank=True, help_text="OBR-4.1")
    procedure_code_scheme = models.CharField(max_length=64, blank=True, help_text="OBR-4.3")
    procedure_code_meaning = models.CharField(max_length=128, blank=True, help_text="OBR-4.2")
    requested_procedure_priority = models.CharField(
        max_length=8, choices=states.PRIORITY_CHOICES, default=states.PRIORITY_ROUTINE, help_text="(0040,1003)"
    )
    study_instance_uid = models.CharField(max_length=64, unique=True, help_text="ZDS-1 / IPC-3 / (0020,000D)")
    accession_number = models.CharField(max_length=16, unique=True, help_text="OBR-18 / IPC-1 / (0008,0050)")
    accession_number_issuer = models.CharField(max_length=64, blank=True)
    accession_assigned_by_us = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=states.RP_STATUS_CHOICES, default=states.RP_SCHEDULED)
    # The order placer's ORC-1 CA / DC (ris.states, "placer status"): set by the inbound message,
    # whatever the workflow status; changed only through ris.services.transitions.transition.
    placer_status = models.CharField(max_length=16, blank=True, default=states.PLACER_NONE,
                                     choices=states.PLACER_STATUS_CHOICES, help_text="ORC-1 CA / DC of the placer")
    placer_status_at = models.DateTimeField(null=True, blank=True, help_text="when the CA / DC was applied")
    placer_status_cause = models.CharField(max_length=255, blank=True,
                                           help_text="the message, e.g. 'HL7 ORM^O01 CA/CA MSG00012'")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["requested_procedure_id"])]

    @property
    def placer_flag(self) -> str:
        """The flag the reading worklist shows, e.g. "order cancelled by the EHR on 2026-12-03"."""
        return placer_flag(self.placer_status, self.placer_status_at)

    def __str__(self) -> str:
        return f"{self.accession_number} {self.requested_procedure_description}".strip()


class ScheduledProcedureStep(models.Model):
    """One scheduled step: one row of the DICOM Modality Worklist (PS3.4 K.6.1.2.2).

    Its attributes sit in ScheduledProcedureStepSequence (0040,0100) of an MWL item.
    ``scheduled_start`` combines ScheduledProcedureStepStartDate/Time in the
    department's TIME_ZONE.
    """

    requested_procedure = models.ForeignKey(RequestedProcedure, on_delete=models.CASCADE, related_name="steps")
    scheduled_procedure_step_id = models.CharField(max_length=16, help_text="OBR-20 / IPC-4 / (0040,0009)")
    modality = models.CharField(max_length=16, help_text="OBR-24 / IPC-5 / (0008,0060)")
    scheduled_station_ae_title = models.CharField(max_length=16, blank=True, help_text="IPC-9 / (0040,0001)")
    scheduled_station_name = models.CharField(max_length=16, blank=True, help_text="(0040,0010)")
    scheduled_procedure_step_location = models.CharField(max_length=16, blank=True, help_text="(0040,0011)")
    scheduled_start = models.DateTimeField(help_text="ORC-7.4 / OBR-27.4 / TQ1-7 -> (0040,0002)+(0040,0003)")
    scheduled_performing_physician_name = models.CharField(max_length=320, blank=True, help_text="(0040,0006)")
    scheduled_procedure_step_description = models.CharField(max_length=64, blank=True, help_text="(0040,0007)")
    protocol_code_value = models.CharField(max_length=64, blank=True, help_text="(0040,0008) item")
    protocol_code_scheme = models.CharField(max_length=64, blank=True)
    protocol_code_meaning = models.CharField(max_length=128, blank=True)
    status = models.CharField(
        max_length=16, choices=states.SPS_STATUS_CHOICES, default=states.SPS_SCHEDULED, help_text="(0040,0020)"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["requested_procedure", "scheduled_procedure_step_id"], name="uniq_sps_id_per_procedure"
            )
        ]
        indexes = [
            models.Index(fields=["modality", "scheduled_start"]),
            models.Index(fields=["scheduled_station_ae_title", "scheduled_start"]),
            models.Index(fields=["scheduled_start"]),
            models.Index(fields=["status"]),
        ]

    def __str__(self) -> str:
        return f"{self.scheduled_procedure_step_id} {self.modality} {self.status}"


class StatusChange(models.Model):
    """Every status change of any entity: from, to, cause, who, when (one audit trail)."""

    entity = models.CharField(max_length=32, help_text="the transition table used, e.g. 'sps'")
    object_id = models.BigIntegerField()
    from_status = models.CharField(max_length=32)
    to_status = models.CharField(max_length=32)
    cause = models.CharField(max_length=255, help_text="e.g. 'HL7 ORM^O01 CA/CA MSG00012' or 'MPPS N-SET'")
    actor = models.CharField(max_length=150, blank=True, help_text="user name or interface")
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["entity", "object_id", "at"])]
        ordering = ["at", "pk"]

    def __str__(self) -> str:
        return f"{self.entity}#{self.object_id} {self.from_status}->{self.to_status}"


class PatientMerge(models.Model):
    """An A40 merge: the retired identifier (MRG-1) folded into the survivor (PID-3).

    ``moved`` lists what moved, by model and primary key, so the merge can be shown and undone.
    """

    survivor = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="merges_received")
    retired = models.ForeignKey(Patient, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    retired_patient_id = models.CharField(max_length=64, help_text="MRG-1.1")
    retired_issuer_of_patient_id = models.CharField(max_length=64, blank=True, help_text="MRG-1.4")
    moved = models.JSONField(default=dict)
    cause = models.CharField(max_length=255)
    at = models.DateTimeField(auto_now_add=True)
    undone_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.retired_patient_id} -> patient {self.survivor_id}"


class AccessionNumberAllocation(models.Model):
    """Database-allocated accession numbers where the database has no sequences (SQLite).

    On PostgreSQL ``ris.services.identifiers`` uses the sequence ``ris_accession_number_seq``.
    """

    allocated_at = models.DateTimeField(auto_now_add=True)


def placer_flag(placer_status: str, at) -> str:
    """"order cancelled by the EHR on <date>" (or discontinued) for a placer status; empty for none.
    The date is the local date (TIME_ZONE) the CA / DC was applied."""
    if not placer_status:
        return ""
    what = "cancelled" if placer_status == states.PLACER_CANCELED else "discontinued"
    when = f" on {timezone.localtime(at).date().isoformat()}" if at else ""
    return f"order {what} by the EHR{when}"


def retired_by_merge(patient_ref: str = "patient") -> models.Exists:
    """For a PatientIdentifier query: true when the identifier was retired (MRG-1) into its
    patient by an A40 merge still in force.  ``patient_ref`` names the identifier's patient
    column in the outer query.  The one spelling of this rule, for Python and SQL callers
    (``Patient.current_identifiers``, the MWL's PatientID)."""
    return models.Exists(
        PatientMerge.objects.filter(
            survivor=models.OuterRef(patient_ref), undone_at__isnull=True,
            retired_patient_id=models.OuterRef("id_number"),
            retired_issuer_of_patient_id=models.OuterRef("assigning_authority"),
        )
    )
