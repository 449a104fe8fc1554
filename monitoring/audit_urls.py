"""/audit/: the audit page (monitoring.audit_views), for privacy officers and administrators."""

from django.urls import path

from monitoring import audit_views

app_name = "audit"

urlpatterns = [
    path("", audit_views.search_page, name="search"),
    path("records/<int:record_id>/", audit_views.record_page, name="record"),
    path("who-saw/", audit_views.who_saw_page, name="who_saw"),
    path("export.csv", audit_views.export_csv, name="export"),
]
