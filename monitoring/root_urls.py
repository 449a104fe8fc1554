"""The endpoints probes and scrapers expect at the root, mounted by ``project.urls``: the web
process's health (``/health/``) and Prometheus's ``/metrics`` (also at ``/monitoring/metrics``)."""

from django.http import JsonResponse
from django.urls import path

from monitoring import health as checks
from monitoring import views
from project.access import public


@public
def health(request):
    """Health of the web process: the database and the broker answer (monitoring.health).
    200 when both do, 503 otherwise; no patient data, no version details."""
    results = {"database": checks.database(), "broker": checks.broker(timeout=2.0)}
    ok = all(results.values())
    return JsonResponse({"status": "ok" if ok else "failed", "checks": results}, status=200 if ok else 503)


urlpatterns = [
    path("health/", health, name="health"),
    # Access by address or token (monitoring.views.scrape_allowed).
    path("metrics", views.metrics, name="metrics"),
]
