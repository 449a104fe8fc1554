"""Admin pages of the imaging side: DICOM nodes, MPPS (unscheduled ones flagged for
reconciliation).  The image issue appends its models below."""

from __future__ import annotations

from django.contrib import admin

from pacs.models import DicomNode, PerformedInstance, PerformedProcedureStep


@admin.register(DicomNode)
class DicomNodeAdmin(admin.ModelAdmin):
    list_display = (
        "ae_title", "host", "port", "enabled", "allow_echo", "allow_mwl_find", "allow_mpps", "allow_store",
        "station_ae_title", "description",
    )
    list_filter = ("enabled", "allow_mwl_find", "allow_mpps", "allow_store")
    search_fields = ("ae_title", "host", "description", "station_ae_title")


class PerformedInstanceInline(admin.TabularInline):
    model = PerformedInstance
    extra = 0
    can_delete = False
    readonly_fields = ("series_instance_uid", "sop_class_uid", "sop_instance_uid")


class UnscheduledFilter(admin.SimpleListFilter):
    """MPPS for no scheduled step: unscheduled exams waiting for reconciliation."""

    title = "scheduled"
    parameter_name = "scheduled"

    def lookups(self, request, model_admin):
        return [("no", "unscheduled (to reconcile)"), ("yes", "scheduled")]

    def queryset(self, request, queryset):
        if self.value() == "no":
            return queryset.filter(scheduled_step__isnull=True)
        if self.value() == "yes":
            return queryset.filter(scheduled_step__isnull=False)
        return queryset


@admin.register(PerformedProcedureStep)
class PerformedProcedureStepAdmin(admin.ModelAdmin):
    list_display = (
        "sop_instance_uid", "status", "scheduled", "accession_number", "patient_id", "modality",
        "calling_ae_title", "started_at", "ended_at",
    )
    list_filter = (UnscheduledFilter, "status", "modality")
    search_fields = ("sop_instance_uid", "accession_number", "patient_id", "study_instance_uid")
    raw_id_fields = ("scheduled_step",)
    readonly_fields = ("sop_instance_uid", "status", "attributes", "created_at", "updated_at")
    inlines = [PerformedInstanceInline]

    @admin.display(boolean=True, description="scheduled")
    def scheduled(self, obj):
        return not obj.is_unscheduled
