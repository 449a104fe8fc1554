"""Admin of the alarm rules (thresholds per interface, schedules, recipients), the alarms kept
with their open and clear times (read-only), and the per-AE DICOM operation counters."""

from __future__ import annotations

from django.contrib import admin

from monitoring.models import Alarm, AlarmRule, DicomOperation


@admin.register(AlarmRule)
class AlarmRuleAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "interface_key", "threshold_minutes", "threshold_rate", "schedule_weekdays",
                    "schedule_start_hour", "schedule_end_hour", "enabled")
    list_filter = ("kind", "enabled")
    search_fields = ("name", "interface_key")
    fieldsets = (
        (None, {"fields": ("name", "kind", "interface_key", "enabled")}),
        ("Threshold", {"fields": ("threshold_minutes", "threshold_rate", "min_count")}),
        ("Schedule (empty: always)", {"fields": ("schedule_weekdays", "schedule_start_hour", "schedule_end_hour")}),
        ("Notify", {"fields": ("notify_emails", "webhook_url")}),
    )


@admin.register(Alarm)
class AlarmAdmin(admin.ModelAdmin):
    list_display = ("rule", "interface_key", "opened_at", "cleared_at", "last_value", "message")
    list_filter = ("rule__kind", ("cleared_at", admin.EmptyFieldListFilter))
    search_fields = ("interface_key", "message", "rule__name")
    date_hierarchy = "opened_at"

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(DicomOperation)
class DicomOperationAdmin(admin.ModelAdmin):
    list_display = ("hour", "calling_ae_title", "operation", "status_hex", "count", "last_at")
    list_filter = ("operation", "calling_ae_title")

    @admin.display(description="status")
    def status_hex(self, obj):
        return f"0x{obj.status:04X}"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
