"""Sessions that end: after ``SESSION_IDLE_MINUTES`` without activity, and ``SESSION_MAX_HOURS``
after sign-in whatever the activity.

A reading room's workstation is left signed in while its user walks away; an idle limit closes
it.  Saving the session on every request (``SESSION_SAVE_EVERY_REQUEST``) would write a database
row per page and per background refresh; instead the time of the last activity is kept in the
session and written at most once a minute (or a tenth of the idle limit, when that is shorter),
so the limit is exact to that step.

What counts as activity: every request but those that a page sends by itself in the background,
marked ``X-Background-Refresh: 1`` (the reading worklist's self-refresh, worklist.js).  Such a
request is answered while the session is alive but does not extend it: a worklist left open on an
unattended screen is signed out after the idle limit like any other page.

A password change ends every other session of that user: Django keeps a hash of the password in
each session (``HASH_SESSION_KEY``) and drops a session whose hash no longer matches.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.contrib.auth import logout
from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver

LAST_ACTIVITY = "pacs_last_activity"
SIGNED_IN_AT = "pacs_signed_in_at"
BACKGROUND_HEADER = "X-Background-Refresh"


def is_background(request) -> bool:
    return request.headers.get(BACKGROUND_HEADER, "") == "1"


@receiver(user_logged_in, dispatch_uid="accounts.sessions.signed_in")
def _start_clock(sender, request=None, **kwargs):
    if request is not None and hasattr(request, "session"):
        request.session[SIGNED_IN_AT] = request.session[LAST_ACTIVITY] = time.time()


class IdleSessionMiddleware:
    """After AuthenticationMiddleware: signs out an idle or too old session before the view runs
    (LoginRequiredMiddleware then sends the browser to the sign-in page)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            self._check(request)
        return self.get_response(request)

    @staticmethod
    def _check(request) -> None:
        session = request.session
        now = time.time()
        idle = float(settings.SESSION_IDLE_MINUTES) * 60
        signed_in = session.get(SIGNED_IN_AT)
        last = session.get(LAST_ACTIVITY)
        if signed_in is None or last is None:
            # First request of a session signed in before this middleware existed, or just now.
            session[SIGNED_IN_AT] = signed_in = now if signed_in is None else signed_in
            session[LAST_ACTIVITY] = last = now
        if now - last >= idle or now - signed_in >= float(settings.SESSION_MAX_HOURS) * 3600:
            logout(request)  # flushes the session row and sets an anonymous user
            return
        if not is_background(request) and now - last >= min(60.0, idle / 10):
            session[LAST_ACTIVITY] = now
