"""Admin pages of the RIS domain: patients (with identifiers), orders with their requested
procedures and scheduled steps, status changes, merges.  An order received over HL7 is visible
here with its patient, accession numbers and steps.  Statuses are read-only here: they change
only through ``ris.services.transitions.transition``."""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from project.admin_mixins import ReadOnlyAdmin
from ris.audited_admin import AuditedAdmin
from ris.models import (
    Order,
    Patient,
    PatientIdentifier,
    PatientMerge,
    RequestedProcedure,
    ScheduledProcedureStep,
    StatusChange,
    Visit,
)


class PatientIdentifierInline(admin.TabularInline):
    model = PatientIdentifier
    extra = 0
    fields = ("id_number", "assigning_authority", "identifier_type_code")


class VisitInline(admin.TabularInline):
    model = Visit
    extra = 0
    fields = ("visit_number", "patient_class", "assigned_location", "referring_physician_name", "admit_datetime")


class OrderInline(admin.TabularInline):
    model = Order
    extra = 0
    fields = ("link", "placer_order_number", "filler_order_number", "order_control", "order_status", "created_at")
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    def link(self, obj):
        return format_html('<a href="{}">order {}</a>', reverse("admin:ris_order_change", args=[obj.pk]), obj.pk)

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Patient)
class PatientAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ("patient_name", "identifiers_display", "patient_birth_date", "patient_sex", "merged_into",
                    "updated_at")
    search_fields = ("patient_name", "=identifiers__id_number")
    list_filter = ("patient_sex",)
    readonly_fields = ("merged_into", "created_at", "updated_at")
    inlines = [PatientIdentifierInline, VisitInline, OrderInline]

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("identifiers")

    @admin.display(description="identifiers (PID-3)")
    def identifiers_display(self, obj: Patient) -> str:
        return ", ".join(str(i) for i in obj.identifiers.all())


class RequestedProcedureInline(admin.StackedInline):
    model = RequestedProcedure
    extra = 0
    fields = ("accession_number", "requested_procedure_id", "requested_procedure_description",
              "procedure_code_value", "procedure_code_scheme", "requested_procedure_priority", "study_instance_uid",
              "status", "accession_assigned_by_us", "steps_display")
    readonly_fields = ("status", "accession_number", "study_instance_uid", "accession_assigned_by_us",
                       "steps_display")
    show_change_link = True

    @admin.display(description="scheduled procedure steps")
    def steps_display(self, obj: RequestedProcedure) -> str:
        rows = [format_html("<li>{} {} {} {} {}</li>", s.scheduled_procedure_step_id, s.modality,
                            s.scheduled_station_ae_title or "-", s.scheduled_start, s.status)
                for s in obj.steps.order_by("scheduled_start", "pk")]
        return format_html("<ul>{}</ul>", mark_safe("".join(rows))) if rows else "-"  # noqa: S308 - rows escaped


@admin.register(Order)
class OrderAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ("pk", "placer_order_number", "filler_order_number", "patient", "accession_display",
                    "order_control", "order_status", "sending_application", "created_at")
    search_fields = ("=placer_order_number", "=filler_order_number", "=procedures__accession_number",
                     "=patient__identifiers__id_number", "patient__patient_name")
    list_filter = ("order_control", "sending_application")
    readonly_fields = ("patient", "order_control", "order_status", "created_at", "updated_at")
    raw_id_fields = ("visit",)
    inlines = [RequestedProcedureInline]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("patient").prefetch_related("procedures")

    @admin.display(description="accession numbers")
    def accession_display(self, obj: Order) -> str:
        return ", ".join(p.accession_number for p in obj.procedures.all())


class ScheduledProcedureStepInline(admin.TabularInline):
    model = ScheduledProcedureStep
    extra = 0
    fields = ("scheduled_procedure_step_id", "modality", "scheduled_station_ae_title", "scheduled_start",
              "scheduled_procedure_step_description", "status")
    readonly_fields = ("status",)


@admin.register(RequestedProcedure)
class RequestedProcedureAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ("accession_number", "requested_procedure_id", "requested_procedure_description", "order",
                    "requested_procedure_priority", "status")
    search_fields = ("=accession_number", "=requested_procedure_id", "=study_instance_uid",
                     "=order__placer_order_number")
    list_filter = ("status", "requested_procedure_priority")
    readonly_fields = ("order", "status", "accession_number", "study_instance_uid", "created_at", "updated_at")
    inlines = [ScheduledProcedureStepInline]


@admin.register(ScheduledProcedureStep)
class ScheduledProcedureStepAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ("scheduled_procedure_step_id", "modality", "scheduled_station_ae_title", "scheduled_start",
                    "status", "requested_procedure")
    search_fields = ("=scheduled_procedure_step_id", "=requested_procedure__accession_number",
                     "scheduled_station_ae_title")
    list_filter = ("status", "modality", "scheduled_station_ae_title")
    readonly_fields = ("requested_procedure", "status", "created_at", "updated_at")
    date_hierarchy = "scheduled_start"


@admin.register(StatusChange)
class StatusChangeAdmin(ReadOnlyAdmin, AuditedAdmin, admin.ModelAdmin):
    list_display = ("at", "entity", "object_id", "from_status", "to_status", "cause", "actor")
    list_filter = ("entity", "to_status")
    search_fields = ("=object_id", "cause", "actor")
    date_hierarchy = "at"


@admin.register(PatientMerge)
class PatientMergeAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ("at", "retired_patient_id", "retired_issuer_of_patient_id", "survivor", "retired", "cause",
                    "undone_at")
    search_fields = ("=retired_patient_id", "=survivor__identifiers__id_number", "cause")
    readonly_fields = ("survivor", "retired", "retired_patient_id", "retired_issuer_of_patient_id", "moved", "cause",
                       "at", "undone_at")

    def has_add_permission(self, request):
        return False
