"""URL configuration.  Everything but login, health and static files requires a login."""

from django.contrib import admin
from django.http import JsonResponse
from django.urls import path


def health(request):
    """Liveness of the web process: no patient data, no version details."""
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("admin/", admin.site.urls),
    path("health/", health, name="health"),
]
