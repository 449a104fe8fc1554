"""The Content-Security-Policy header (CSP Level 3, W3C) on every response the web process gives:
pages, the admin, the login page, error pages, static files.

Scripts and styles come from the engine's own origin only, never inline: a name that slipped
through escaping into a page (a patient's name is free text from HL7 PID-5) cannot run as script,
and no inline <script>, on*="" handler or style attribute exists in the templates (the styles
are in static files).  No plugins (object-src), no <base> elsewhere, forms post only back to the
engine, and no other site may frame a page (frame-ancestors, with X-Frame-Options DENY for old
browsers).  The Django admin needs nothing more: it has no inline script, and its one inline
<style> (a change list without actions) is never rendered here, as every admin keeps its actions.
"""

from __future__ import annotations

HEADER = "Content-Security-Policy"
POLICY = "; ".join([
    "default-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])

#: The built-in image viewer's pages and files (``/viewer/``, worklist.ohif) only, and only what
#: OHIF needs beyond ``POLICY``: its image codecs are WebAssembly ('wasm-unsafe-eval', not
#: 'unsafe-eval'); React and its style sheets set inline styles ('unsafe-inline' for styles, never
#: for scripts); decoded images and worker code come as data: and blob: URLs.  Scripts and every
#: request still go to the engine's own origin only (its DICOMweb), and no other site may frame it.
VIEWER_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self' 'wasm-unsafe-eval'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",
    "font-src 'self' data:",
    "worker-src 'self' blob:",
    "connect-src 'self' data: blob:",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])


class ContentSecurityPolicyMiddleware:
    """Outermost but one (``settings.MIDDLEWARE``): it sees every response, the 404 and 500 pages
    that Django makes from exceptions raised further in included."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.headers.setdefault(HEADER, POLICY)
        return response
