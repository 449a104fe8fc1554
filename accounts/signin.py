"""Sign-in that resists guessing: lockouts (django-axes), the sign-in form, and the lockout event.

django-axes counts failed sign-ins per user name and per client address (``project.https.client_address``,
which believes ``X-Forwarded-For`` from ``WEB_TRUSTED_PROXIES`` only); at ``LOGIN_FAILURE_LIMIT``
failures in a row either is locked for ``LOGIN_LOCKOUT_MINUTES`` (0: until an administrator
unlocks it: the admin's "Access attempts", or ``manage.py unlock_account``).  A user name that
does not exist is counted and locked like one that does, so the locked page says nothing about
which names exist.  A successful sign-in clears the counts of that user name and that address.

``account_locked`` (accounts.signals) is sent when a lockout begins (kwargs: ``username``,
``ip_address``, ``request``), so that an audit trail can record it without knowing axes.
"""

from __future__ import annotations

import logging

from axes.signals import user_locked_out
from django import forms
from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.dispatch import receiver

from accounts.signals import account_locked

log = logging.getLogger("accounts.signin")


def failure_limit(request, credentials) -> int:
    """AXES_FAILURE_LIMIT: read at each attempt, so that the setting is the one in force."""
    return settings.LOGIN_FAILURE_LIMIT


@receiver(user_locked_out, dispatch_uid="accounts.signin.locked")
def _announce_lockout(sender, request=None, username=None, ip_address=None, **kwargs):
    # A staff user name and an address, never patient data.
    log.warning("sign-in locked after repeated failures", extra={"username": username, "client": ip_address})
    account_locked.send(sender=__name__, username=username, ip_address=ip_address, request=request)


DIRECTORY_UNAVAILABLE = (
    "The directory (LDAP) cannot be reached, so directory accounts cannot sign in now. "
    "Local accounts still work. If this persists, tell the system administrator."
)


class SignInForm(AuthenticationForm):
    """Django's sign-in form; when the directory could not be asked (``accounts.directory`` marks the
    request), the refusal says so instead of "wrong user name or password"."""

    def clean(self):
        try:
            return super().clean()
        except forms.ValidationError:
            if getattr(self.request, "pacs_directory_unavailable", False):
                raise forms.ValidationError(DIRECTORY_UNAVAILABLE, code="directory_unavailable") from None
            raise


class SignInView(auth_views.LoginView):
    authentication_form = SignInForm
