"""Whether a web request came over HTTPS, and what follows from it.

A request is HTTPS when gunicorn itself terminated TLS (``WEB_TLS``; the WSGI ``wsgi.url_scheme``
is ``https``) or when a reverse proxy that terminated it says so in ``X-Forwarded-Proto``
(RFC 7239 section 5.4 defines the standard ``Forwarded: proto=``; the de-facto header is the one
proxies send).  Django's ``SECURE_PROXY_SSL_HEADER`` believes that header from anyone, so this
middleware, first in the chain, removes it unless the connection comes from one of
``WEB_TRUSTED_PROXIES`` (addresses or CIDR networks): a browser that reaches the engine directly
cannot make a plain HTTP request look secure.

On an HTTPS request the session and CSRF cookies are marked ``Secure`` (RFC 6265 section 4.1.2.5)
so that the browser never sends them back over plain HTTP; on plain HTTP they are left as they
are, so the embedded default on http://localhost keeps working.  HSTS (RFC 6797) and the redirect
to HTTPS are Django's ``SecurityMiddleware``, which runs after this one and sees the corrected
request.
"""

from __future__ import annotations

from django.conf import settings

from project.peers import in_networks

FORWARDED_PROTO = "HTTP_X_FORWARDED_PROTO"


def from_trusted_proxy(remote_addr: str) -> bool:
    return bool(remote_addr) and in_networks(remote_addr, settings.WEB_TRUSTED_PROXIES)


class HttpsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if FORWARDED_PROTO in request.META and not from_trusted_proxy(request.META.get("REMOTE_ADDR", "")):
            del request.META[FORWARDED_PROTO]
        response = self.get_response(request)
        if request.is_secure():
            for name in (settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME):
                if name in response.cookies:
                    response.cookies[name]["secure"] = True
        return response


def client_address(request) -> str:
    """The address of the client that made ``request``: the connection's own address, or, when
    the connection comes from one of ``WEB_TRUSTED_PROXIES``, the nearest address in
    ``X-Forwarded-For`` (de-facto header, the form of RFC 7239 ``for=``) that is not itself a
    trusted proxy.  The list is read from the right: each proxy appends the address it saw, so
    only the entries our own proxies wrote are believed and a client cannot choose the address it
    is counted under (sign-in lockouts, accounts.signin)."""
    address = request.META.get("REMOTE_ADDR", "")
    if not from_trusted_proxy(address):
        return address
    forwarded = [a.strip() for a in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if a.strip()]
    for hop in reversed(forwarded):
        if not from_trusted_proxy(hop):
            return hop
        address = hop
    return address
