"""Admin pages of the reading worklist: dictation API tokens (revoke), claims (history)."""

from django.contrib import admin
from django.utils import timezone

from ris.audited_admin import AuditedAdmin
from worklist.models import ApiToken, ReadingClaim


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are created with ``manage.py create_api_token`` (the key is shown once); here they are revoked."""

    list_display = ("name", "user", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "user__username")
    readonly_fields = ("user", "name", "key_sha256", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Revoke the selected tokens")
    def revoke(self, request, queryset):
        n = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"{n} token(s) revoked.")


@admin.register(ReadingClaim)
class ReadingClaimAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ("requested_procedure", "user", "claimed_at", "last_activity_at", "released_at", "release_reason",
                    "released_by")
    list_filter = ("release_reason",)
    search_fields = ("requested_procedure__accession_number", "user__username")
    readonly_fields = [f.name for f in ReadingClaim._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
