"""Reading worklist pages and the dictation API (each view declares its roles, see project.access)."""

from django.urls import path, re_path

from worklist import api, views

app_name = "worklist"

urlpatterns = [
    path("", views.reading_list, name="list"),
    path("reading/filters/save/", views.save_filter, name="save_filter"),
    path("reading/filters/<int:filter_id>/delete/", views.delete_filter, name="delete_filter"),
    path("reading/studies/<int:requested_procedure_id>/", views.study, name="study"),
    path("reading/studies/<int:requested_procedure_id>/claim/", views.claim, name="claim"),
    path("reading/studies/<int:requested_procedure_id>/autosave/", views.autosave, name="autosave"),
    path("reading/studies/<int:requested_procedure_id>/sign/", views.sign, name="sign"),
    path("reading/studies/<int:requested_procedure_id>/release/", views.release, name="release"),
    path("reading/templates/", views.template_list, name="templates"),
    path("reading/templates/new/", views.template_edit, name="template_new"),
    path("reading/templates/<int:template_id>/", views.template_edit, name="template_edit"),
    re_path(r"^viewer/(?P<path>.*)$", views.viewer, name="viewer"),
    path("api/v1/reports/", api.create_report, name="api_create_report"),
    path("api/v1/reports/<str:accession_number>/", api.report_detail, name="api_report"),
    path("api/v1/reports/<str:accession_number>/sign/", api.sign_report, name="api_sign"),
    path("api/v1/reports/<str:accession_number>/addenda/", api.add_addendum, name="api_addendum"),
]
