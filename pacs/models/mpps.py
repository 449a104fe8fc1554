"""Modality Performed Procedure Step (DICOM PS3.4 Annex F, PS3.3 B.17 / C.4.13-C.4.15).

One ``PerformedProcedureStep`` per MPPS SOP Instance the modality created (N-CREATE),
updated by N-SET until COMPLETED or DISCONTINUED.  ``scheduled_step`` is the step the
MPPS names in ScheduledStepAttributesSequence (0040,0270); it is null for an
unscheduled exam, which stays here for reconciliation.  The series and instances it
lists in PerformedSeriesSequence (0040,0340) are kept as ``PerformedInstance`` rows:
the study-completion service compares them with what arrived by C-STORE.

Statuses change only through ``ris.services.transitions.transition`` (entity "mpps").
"""

from __future__ import annotations

from django.db import models

IN_PROGRESS = "IN PROGRESS"
COMPLETED = "COMPLETED"
DISCONTINUED = "DISCONTINUED"
STATUSES = (IN_PROGRESS, COMPLETED, DISCONTINUED)
FINAL = frozenset({COMPLETED, DISCONTINUED})
# Allowed changes (IN PROGRESS -> COMPLETED | DISCONTINUED, PS3.4 F.7.2.2): ris.states.TABLES["mpps"].


class PerformedProcedureStep(models.Model):
    """An MPPS SOP Instance: PerformedProcedureStepStatus (0040,0252) and what it says."""

    sop_instance_uid = models.CharField(max_length=64, unique=True, help_text="Affected SOP Instance UID")
    status = models.CharField(
        max_length=16, choices=[(s, s) for s in STATUSES], default=IN_PROGRESS, help_text="(0040,0252)"
    )
    scheduled_step = models.ForeignKey(
        "ris.ScheduledProcedureStep", null=True, blank=True, on_delete=models.SET_NULL,
        related_name="performed_procedure_steps", help_text="null: unscheduled, to reconcile",
    )
    study_instance_uid = models.CharField(max_length=64, blank=True, db_index=True, help_text="(0020,000D)")
    accession_number = models.CharField(max_length=16, blank=True, db_index=True, help_text="(0008,0050)")
    patient_id = models.CharField(max_length=64, blank=True, db_index=True, help_text="(0010,0020)")
    patient_name = models.CharField(max_length=320, blank=True, help_text="(0010,0010)")
    modality = models.CharField(max_length=16, blank=True, help_text="(0008,0060)")
    performed_procedure_step_id = models.CharField(max_length=16, blank=True, help_text="(0040,0253)")
    performed_station_ae_title = models.CharField(max_length=16, blank=True, help_text="(0040,0241)")
    performed_procedure_step_description = models.CharField(max_length=64, blank=True, help_text="(0040,0254)")
    calling_ae_title = models.CharField(max_length=16, blank=True, help_text="the AE that sent the N-CREATE")
    started_at = models.DateTimeField(null=True, blank=True, help_text="(0040,0244)+(0040,0245)")
    ended_at = models.DateTimeField(null=True, blank=True, help_text="(0040,0250)+(0040,0251)")
    # Every attribute received (N-CREATE merged with each N-SET), in DICOM JSON (PS3.18 F.2).
    attributes = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "performed procedure step (MPPS)"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "created_at"])]

    def __str__(self) -> str:
        return f"MPPS {self.sop_instance_uid} {self.status}"

    @property
    def is_unscheduled(self) -> bool:
        return self.scheduled_step_id is None


class PerformedInstance(models.Model):
    """One instance an MPPS lists in PerformedSeriesSequence > ReferencedImageSequence /
    ReferencedNonImageCompositeSOPInstanceSequence (PS3.3 C.4.15)."""

    performed_procedure_step = models.ForeignKey(
        PerformedProcedureStep, on_delete=models.CASCADE, related_name="performed_instances"
    )
    series_instance_uid = models.CharField(max_length=64, help_text="(0020,000E)")
    sop_class_uid = models.CharField(max_length=64, help_text="(0008,1150)")
    sop_instance_uid = models.CharField(max_length=64, db_index=True, help_text="(0008,1155)")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["performed_procedure_step", "sop_instance_uid"], name="uniq_performed_instance_per_mpps"
            )
        ]

    def __str__(self) -> str:
        return self.sop_instance_uid
