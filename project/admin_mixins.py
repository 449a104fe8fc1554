"""ModelAdmin mixins shared by the apps (project is the layer every app may import)."""

from __future__ import annotations


class ReadOnlyAdmin:
    """A ModelAdmin mixin for rows that are records, not data to edit (an audit trail, a status
    history): they are written by the code that does the work, so the admin may show them but
    never add, change or delete one.  Who may see them is the ModelAdmin's own rule."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
