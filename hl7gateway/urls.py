"""Web pages of this app (each view declares its roles, see project.access), under /interfaces/."""

from django.urls import path

from hl7gateway import views

app_name = "interfaces"

urlpatterns = [
    path("", views.outbound, name="outbound"),
    path("outbound/<int:message_id>/", views.outbound_detail, name="outbound_detail"),
    path("outbound/<int:message_id>/retry/", views.outbound_retry, name="outbound_retry"),
    path("outbound/<int:message_id>/cancel/", views.outbound_cancel, name="outbound_cancel"),
    path("charges/", views.charges, name="charges"),
]
