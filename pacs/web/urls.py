"""Web pages of this app (each view declares its roles, see project.access)."""

from django.urls import path

from pacs.web import views

app_name = "imaging"

urlpatterns = [
    path("reconciliation/", views.reconciliation, name="reconciliation"),
    path("reconciliation/<int:study_id>/", views.reconcile_study, name="reconcile_study"),
    path("reconciliation/<int:study_id>/link/", views.link_study, name="link_study"),
    path("reconciliation/<int:study_id>/new-order/", views.new_order_for_study, name="new_order"),
    path("priors/", views.priors, name="priors"),
    path("transfers/", views.transfers, name="transfers"),
    path("transfers/<int:transfer_id>/retry/", views.retry_transfer, name="retry_transfer"),
    path("transfers/<int:transfer_id>/cancel/", views.cancel_transfer, name="cancel_transfer"),
]
