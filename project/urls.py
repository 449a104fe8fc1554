"""URL configuration.  Every view declares its roles (project.access); login is required for
everything but @public views (login, health) and static files.  The apps' URL modules are
included by name: the project package imports no app (the layer contract in pyproject.toml)."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("monitoring.root_urls")),
    path("", include("accounts.urls")),
    path("", include("worklist.urls")),
    path("imaging/", include("pacs.web.urls")),
    path("dicomweb/", include("pacs.dicomweb.urls")),
    path("interfaces/", include("hl7gateway.urls")),
    path("monitoring/", include("monitoring.urls")),
    path("audit/", include("monitoring.audit_urls")),
]
