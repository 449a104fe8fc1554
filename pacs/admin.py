"""Admin pages of the imaging side: DICOM nodes, MPPS (unscheduled ones flagged for
reconciliation), received studies and VNA transfers."""

from __future__ import annotations

from django import forms
from django.contrib import admin

from pacs.models import DicomNode, DicomRefusal, PerformedInstance, PerformedProcedureStep
from ris.audited_admin import AuditedAdmin


@admin.register(DicomNode)
class DicomNodeAdmin(admin.ModelAdmin):
    list_display = (
        "ae_title", "host", "certificate_name", "port", "enabled", "allow_echo", "allow_mwl_find", "allow_mpps", "allow_store",
        "allow_storage_commitment", "allow_query_retrieve", "from_environment", "station_ae_title", "description",
    )
    list_filter = ("enabled", "from_environment", "allow_mwl_find", "allow_mpps", "allow_store",
                   "allow_storage_commitment", "allow_query_retrieve")
    search_fields = ("ae_title", "host", "certificate_name", "description", "station_ae_title")
    readonly_fields = ("from_environment",)


@admin.register(DicomRefusal)
class DicomRefusalAdmin(admin.ModelAdmin):
    """Associations refused per hour and source address (read only: a counter)."""

    list_display = ("hour", "address", "reason", "calling_ae_title", "count", "last_at")
    list_filter = ("reason",)
    search_fields = ("address", "calling_ae_title")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


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
class PerformedProcedureStepAdmin(AuditedAdmin, admin.ModelAdmin):
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


# --- Images and VNA transfers ------------------------------------------------------------------
from pacs.models import Instance, Series, Study, StudyLink, Transfer, TransferItem, VnaDestination  # noqa: E402


class VnaDestinationForm(forms.ModelForm):
    """The password is write-only: never sent back to the browser; left blank it stays as stored,
    "clear password" removes it."""

    password = forms.CharField(required=False, strip=False, widget=forms.PasswordInput(render_value=False),
                               help_text="write-only: leave blank to keep the stored password")
    clear_password = forms.BooleanField(required=False, help_text="remove the stored password")

    class Meta:
        model = VnaDestination
        fields = "__all__"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.initial["password"] = ""
        stored = self.instance.password if self.instance.pk else ""
        self.fields["password"].help_text = (
            "write-only: a password is stored; leave blank to keep it" if stored
            else "write-only: no password is stored")

    def clean(self):
        data = super().clean()
        if data.get("clear_password"):
            data["password"] = ""
        elif not data.get("password") and self.instance.pk:
            data["password"] = VnaDestination.objects.get(pk=self.instance.pk).password
        return data


@admin.register(VnaDestination)
class VnaDestinationAdmin(admin.ModelAdmin):
    form = VnaDestinationForm
    list_display = ("name", "kind", "ae_title", "host", "port", "tls", "url", "storage_commitment", "adt_url",
                    "enabled", "from_environment")
    list_filter = ("kind", "enabled", "from_environment")
    search_fields = ("name", "ae_title", "host", "url")


class SeriesInline(admin.TabularInline):
    model = Series
    extra = 0
    can_delete = False
    readonly_fields = ("series_instance_uid", "modality", "series_number", "series_description",
                       "body_part_examined")


@admin.register(Study)
class StudyAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ("study_instance_uid", "accession_number", "patient_id", "status", "match_method", "batch",
                    "last_received_at")
    list_filter = ("status", "match_method")
    search_fields = ("study_instance_uid", "accession_number", "patient_id")
    raw_id_fields = ("requested_procedure",)
    readonly_fields = ("status", "batch", "corrections", "demographics_mismatch")
    inlines = [SeriesInline]


@admin.register(Instance)
class InstanceAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ("sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "size", "batch", "received_at")
    search_fields = ("sop_instance_uid",)
    raw_id_fields = ("study", "series")


@admin.register(StudyLink)
class StudyLinkAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ("study", "requested_procedure", "created_order", "actor", "at")
    raw_id_fields = ("study", "requested_procedure")


@admin.register(Transfer)
class TransferAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ("pk", "study", "destination", "batch", "status", "attempts", "next_attempt_at", "reason")
    list_filter = ("status", "destination")
    raw_id_fields = ("study",)
    readonly_fields = ("status", "attempts", "transaction_uid")


@admin.register(TransferItem)
class TransferItemAdmin(admin.ModelAdmin):
    list_display = ("transfer", "instance", "status", "reason", "sent_at", "committed_at")
    list_filter = ("status",)
    raw_id_fields = ("transfer", "instance")
