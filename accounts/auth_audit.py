"""Sign-in, sign-out and account changes on the audit trail (DICOM PS3.15 A.5.3.12 User
Authentication, A.5.3.11 Security Alert).

- ``user_logged_in`` / ``user_logged_out``: User Authentication, EventTypeCode Login / Logout,
  outcome 0; ``user_login_failed``: Login with outcome 4, the attempted user name as the actor.
  That name may be a password typed into the wrong field: it is stored in the audit record (the
  record of the attempt needs it) and never written to a log.
- An account created, its groups (roles) changed, its password or its active / staff / superuser
  flags changed, whether in the admin, a management command or the shell: Security Alert with
  EventTypeCode Security Roles Changed or User Security Attributes Changed, written in the
  transaction of the change (``post_save`` / ``m2m_changed``), so that both commit or neither.
- A lockout after repeated failed sign-ins (``accounts.signals.account_locked``, sent by the sign-in
  module when django-axes locks a user name or address): Security Alert, User Security
  Attributes Changed, outcome 8.

Sign-in events use ``audit.trail.record`` (written and committed before the response, in
autocommit): they are rare, and a failed attempt must be on record even if the process dies right
after.  The source address is the client's as ``project.https.client_address`` sees it behind
``WEB_TRUSTED_PROXIES``.  The acting user of an account change is the signed-in user of the
request in progress (:class:`AccountChangeActorMiddleware`), or the engine itself outside a
request (``manage.py createsuperuser``, the shell).
"""

from __future__ import annotations

import contextvars

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models.signals import m2m_changed, post_init, post_save

from accounts.signals import account_locked
from audit import trail
from project.auditing import events
from project.https import client_address

# The request being answered by this thread (or task): who changes an account, from where.
_REQUEST: contextvars.ContextVar = contextvars.ContextVar("pacs_audit_request", default=None)
# The actor of an account change made outside a web request.
SYSTEM_ACTOR = "pacs"
# The account flags whose change is a change of the user's security attributes.
SECURITY_FLAGS = ("is_active", "is_staff", "is_superuser")
# The actor of a failed sign-in with an empty user name (the record needs an actor).
NO_USER_NAME = "(no user name)"


class AccountChangeActorMiddleware:
    """Makes the request known to the account-change receivers below (after authentication)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = _REQUEST.set(request)
        try:
            return self.get_response(request)
        finally:
            _REQUEST.reset(token)


def _address(request) -> str:
    return client_address(request) if request is not None else ""


def _acting() -> tuple[str, str, str]:
    """(actor, actor_kind, source address) of an account change."""
    request = _REQUEST.get()
    user = getattr(request, "user", None) if request is not None else None
    if user is not None and user.is_authenticated:
        return user.get_username(), events.USER, _address(request)
    return SYSTEM_ACTOR, events.SYSTEM, ""


def _account(username: str) -> dict:
    """The account as a participant object (RFC 3881 ID type 11, User Identifier)."""
    return {"type": "account", "id": username}


# --- Sign-in and sign-out (A.5.3.12) ------------------------------------------------------------

def record_login(sender, request=None, user=None, **kwargs) -> None:
    trail.record(events.USER_AUTHENTICATION, event_type=events.LOGIN, action=events.EXECUTE,
                 outcome=events.SUCCESS, actor=user.get_username(), actor_kind=events.USER,
                 source_address=_address(request))


def record_logout(sender, request=None, user=None, **kwargs) -> None:
    """A sign-out; none when nobody was signed in (the logout page opened without a session)."""
    if user is None:
        return
    trail.record(events.USER_AUTHENTICATION, event_type=events.LOGOUT, action=events.EXECUTE,
                 outcome=events.SUCCESS, actor=user.get_username(), actor_kind=events.USER,
                 source_address=_address(request))


def record_login_failed(sender, credentials=None, request=None, **kwargs) -> None:
    """A refused sign-in: the attempted user name is the actor (stored, never logged)."""
    attempted = str((credentials or {}).get(get_user_model().USERNAME_FIELD) or "") or NO_USER_NAME
    trail.record(events.USER_AUTHENTICATION, event_type=events.LOGIN, action=events.EXECUTE,
                 outcome=events.MINOR_FAILURE, actor=attempted, actor_kind=events.USER,
                 source_address=_address(request))


def record_account_locked(sender, username=None, ip_address=None, request=None, **kwargs) -> None:
    """A lockout began (``accounts.signals.account_locked``: a user name or an address had too many
    failed sign-ins).  The user name is the one attempted; the address the one counted."""
    locked = str(username or "") or NO_USER_NAME
    trail.record(events.SECURITY_ALERT, event_type=events.USER_SECURITY_ATTRIBUTES_CHANGED, action=events.EXECUTE,
                 outcome=events.SERIOUS_FAILURE, actor=locked, actor_kind=events.USER,
                 source_address=str(ip_address or "") or _address(request), objects=[_account(locked)],
                 detail={"lockout": True})


# --- Account changes (A.5.3.11) -----------------------------------------------------------------

def _remember_flags(sender, instance, **kwargs) -> None:
    """The security flags as loaded, to see after a save which of them changed."""
    instance._audit_flags = {name: getattr(instance, name, None) for name in SECURITY_FLAGS}


def record_account_saved(sender, instance, created=False, raw=False, **kwargs) -> None:
    """An account created, or its password or security flags changed.  ``_password`` is set by
    ``set_password`` until the save completes, so a password re-hashed at sign-in (the hasher's
    upgrade, saved with ``_password`` cleared) is not taken for a change."""
    if raw:
        return
    actor, kind, address = _acting()
    username = instance.get_username()
    before = getattr(instance, "_audit_flags", None) or {}
    after = {name: getattr(instance, name, None) for name in SECURITY_FLAGS}
    if created:
        trail.record(events.SECURITY_ALERT, event_type=events.USER_SECURITY_ATTRIBUTES_CHANGED, action=events.CREATE,
                     actor=actor, actor_kind=kind, source_address=address, objects=[_account(username)],
                     detail={"created": True, **after})
    else:
        changed = {name: [before.get(name), value] for name, value in after.items()
                   if name in before and before[name] != value}
        password = getattr(instance, "_password", None) is not None
        if changed or password:
            detail = {"changed": {name: {"old": old, "new": new} for name, (old, new) in changed.items()}}
            if password:
                detail["password_changed"] = True
            trail.record(events.SECURITY_ALERT, event_type=events.USER_SECURITY_ATTRIBUTES_CHANGED,
                         action=events.UPDATE, actor=actor, actor_kind=kind, source_address=address,
                         objects=[_account(username)], detail=detail)
    instance._audit_flags = after


def record_groups_changed(sender, instance, action, reverse, model, pk_set, **kwargs) -> None:
    """Groups (roles) added to or removed from accounts: one record per account changed.
    ``user.groups.add(g)`` has the user as ``instance``; ``group.user_set.add(u)`` the group."""
    if action == "pre_clear":
        # The set is gone after the clear: remember what it held.
        instance._audit_cleared = set(
            (instance.user_set if reverse else instance.groups).values_list("pk", flat=True))
        return
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    pks = set(pk_set or ()) if action != "post_clear" else getattr(instance, "_audit_cleared", set())
    if not pks:
        return
    key = "added" if action == "post_add" else "removed"
    user_model = get_user_model()
    if reverse:  # instance is a group, pks are users
        changes = [(u, [instance.name]) for u in user_model.objects.filter(pk__in=pks)]
    else:
        changes = [(instance, sorted(model.objects.filter(pk__in=pks).values_list("name", flat=True)))]
    actor, kind, address = _acting()
    for user, names in changes:
        trail.record(events.SECURITY_ALERT, event_type=events.SECURITY_ROLES_CHANGED, action=events.UPDATE,
                     actor=actor, actor_kind=kind, source_address=address, objects=[_account(user.get_username())],
                     detail={key: names})


def connect() -> None:
    """Connect the receivers (AccountsConfig.ready)."""
    user_model = get_user_model()
    user_logged_in.connect(record_login, dispatch_uid="accounts.auth_audit.login")
    user_logged_out.connect(record_logout, dispatch_uid="accounts.auth_audit.logout")
    user_login_failed.connect(record_login_failed, dispatch_uid="accounts.auth_audit.login_failed")
    post_init.connect(_remember_flags, sender=user_model, dispatch_uid="accounts.auth_audit.flags")
    post_save.connect(record_account_saved, sender=user_model, dispatch_uid="accounts.auth_audit.saved")
    m2m_changed.connect(record_groups_changed, sender=user_model.groups.through, dispatch_uid="accounts.auth_audit.groups")
    account_locked.connect(record_account_locked, dispatch_uid="accounts.auth_audit.locked")
