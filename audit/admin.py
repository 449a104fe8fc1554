"""The audit trail in the admin: read only, for administrators (the audit page is elsewhere)."""

from __future__ import annotations

from django.contrib import admin

from audit import trail
from audit.models import AuditExport, AuditPatient, AuditRecord
from project.access import ADMINISTRATOR
from project.admin_mixins import ReadOnlyAdmin
from project.auditing import events
from project.https import client_address


class _ReadOnlyForAdministrators(ReadOnlyAdmin):
    """Seen by administrators (superusers and the administrator role), never added or edited."""

    def has_view_permission(self, request, obj=None):
        user = request.user
        return user.is_active and (user.is_superuser or user.groups.filter(name=ADMINISTRATOR).exists())

    def has_module_permission(self, request):
        return self.has_view_permission(request)


@admin.register(AuditRecord)
class AuditRecordAdmin(_ReadOnlyForAdministrators, admin.ModelAdmin):
    list_display = ("id", "occurred_at", "event_id", "event_type", "action", "outcome", "actor_kind", "actor",
                    "source_address", "seq")
    list_filter = ("event_id", "action", "outcome", "actor_kind")
    search_fields = ("actor", "patients__patient_id")
    date_hierarchy = "occurred_at"
    show_full_result_count = False

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        cl = getattr(response, "context_data", None) and response.context_data.get("cl")
        if cl is not None:
            self._record_use(request, list(cl.result_list))
        return response

    def change_view(self, request, object_id, form_url="", extra_context=None):
        response = super().change_view(request, object_id, form_url, extra_context)
        original = getattr(response, "context_data", None) and response.context_data.get("original")
        if original is not None:
            self._record_use(request, [original])
        return response

    @staticmethod
    def _record_use(request, shown: list[AuditRecord]) -> None:
        """Audit Log Used R (PS3.15 A.5.3.2): who read the trail, naming the patients of the records shown."""
        patients = AuditPatient.objects.filter(record__in=[r.pk for r in shown]).values_list("patient_id", "issuer")
        trail.record_soon(events.AUDIT_LOG_USED, action=events.READ, actor=request.user.get_username(),
                          actor_kind=events.USER, source_address=client_address(request),
                          patients=list(patients), objects=[{"type": "audit record", "id": str(r.pk)} for r in shown],
                          detail={"page": request.path, "shown": len(shown)})


@admin.register(AuditExport)
class AuditExportAdmin(_ReadOnlyForAdministrators, admin.ModelAdmin):
    """The export cursors: seen, not edited (only the exporter moves a cursor).  Deleting one retires
    a repository no longer used, so that the retention purge no longer waits for it; if that
    repository is configured again, it is sent the whole trail from the start."""

    list_display = ("name", "url", "last_seq", "last_sent_at", "failing_since", "last_error")
    readonly_fields = list_display


    def has_delete_permission(self, request, obj=None):
        return self.has_view_permission(request)
