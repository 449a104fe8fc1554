"""/metrics for Prometheus.

Who may scrape (no login; declared ``@public`` and restricted here): a client whose address
(REMOTE_ADDR; no forwarded headers are trusted) is in ``METRICS_ALLOWED_IPS`` (addresses or
CIDR networks; default the loopback), or any client sending
``Authorization: Bearer <METRICS_BEARER_TOKEN>`` when that setting is non-empty.  Everyone
else gets 403.  The metrics hold interface names, counts and ages: no patient data, no
version details.
"""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpResponse, HttpResponseForbidden
from django.views.decorators.http import require_GET
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from monitoring.metrics import render
from project.access import public


def scrape_allowed(request) -> bool:
    token = settings.METRICS_BEARER_TOKEN
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer ") and hmac.compare_digest(header[7:].strip(), token):
        return True
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    for entry in settings.METRICS_ALLOWED_IPS:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


@public
@require_GET
def metrics(request):
    if not scrape_allowed(request):
        return HttpResponseForbidden("metrics: address not allowed\n", content_type="text/plain")
    return HttpResponse(render(), content_type=CONTENT_TYPE_LATEST)
