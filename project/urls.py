"""URL configuration.  Every view declares its roles (project.access); login is required for
everything but @public views (login, health) and static files."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import JsonResponse
from django.urls import include, path

from accounts.signin import SignInView
from monitoring import health as checks
from monitoring import views as monitoring_views
from project.access import public


@public
def health(request):
    """Health of the web process: the database and the broker answer (monitoring.health).
    200 when both do, 503 otherwise; no patient data, no version details."""
    results = {"database": checks.database(), "broker": checks.broker(timeout=2.0)}
    ok = all(results.values())
    return JsonResponse({"status": "ok" if ok else "failed", "checks": results}, status=200 if ok else 503)


urlpatterns = [
    path("admin/", admin.site.urls),
    path("health/", health, name="health"),
    # Prometheus scrapes /metrics (also at /monitoring/metrics); access by address or token.
    path("metrics", monitoring_views.metrics, name="metrics"),
    path("accounts/login/", public(SignInView.as_view()), name="login"),
    path("accounts/logout/", public(auth_views.LogoutView.as_view()), name="logout"),
    path("", include("worklist.urls")),
    path("imaging/", include("pacs.web.urls")),
    path("interfaces/", include("hl7gateway.urls")),
    path("monitoring/", include("monitoring.urls")),
    path("audit/", include("monitoring.audit_urls")),
]
