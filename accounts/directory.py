"""Directory sign-in: LDAP (RFC 4511) and Active Directory, through django-auth-ldap.

On when ``LDAP_SERVER_URI`` is set (``ldap://`` with ``LDAP_START_TLS`` (RFC 4513 section 3), or
``ldaps://``; ``LDAP_CA_CERTIFICATES`` names the CA file that signs the server's certificate).
A sign-in binds as ``LDAP_BIND_DN`` (the password may be sealed: project.encryption), searches
``LDAP_USER_SEARCH_BASE`` with ``LDAP_USER_SEARCH_FILTER`` (Active Directory:
``(sAMAccountName=%(user)s)``; OpenLDAP: ``(uid=%(user)s)``) and binds as the entry found with
the password typed.  The user's groups are read under ``LDAP_GROUP_SEARCH_BASE``
(``LDAP_GROUP_TYPE``: Active Directory's groups with nesting, or groupOfNames /
groupOfUniqueNames (RFC 4519) / posixGroup (RFC 2307)).

Roles follow ``LDAP_ROLE_GROUPS`` (``role=group DN;role=group DN``, roles of project.access): at every
directory sign-in the user's role groups are set to exactly those the directory grants, so that
a removal in the directory takes effect at the next sign-in.  A user in no mapped group is
signed in with no role, and every page but the sign-in page denies them (default deny).  The
directory's accounts get no usable local password; local accounts (ModelBackend, after this
backend) keep working for small sites and for when the directory is down.
"""

from __future__ import annotations

import logging
import os

import ldap
from django.conf import settings
from django.contrib.auth.models import Group
from django.core.checks import Error, Tags, register
from django.dispatch import receiver
from django_auth_ldap import backend as ldap_backend
from django_auth_ldap import config as ldap_config

from project.access import ROLES
from project.encryption import unseal

log = logging.getLogger("accounts.directory")

GROUP_TYPES = {
    "activedirectory": lambda: ldap_config.NestedActiveDirectoryGroupType(),
    "groupofnames": lambda: ldap_config.GroupOfNamesType(),
    "groupofuniquenames": lambda: ldap_config.GroupOfUniqueNamesType(),
    "posixgroup": lambda: ldap_config.PosixGroupType(),
}


def parse_role_groups(text: str) -> tuple[dict[str, list[str]], list[str]]:
    """``role=group DN;role=group DN`` as {role: [DN, ...]} and the problems found.  A DN holds
    commas and equals signs (RFC 4514), so entries are split at ``;`` and each at its first ``=``."""
    mapping: dict[str, list[str]] = {}
    problems = []
    for entry in (e.strip() for e in text.split(";")):
        if not entry:
            continue
        role, sep, dn = (part.strip() for part in entry.partition("="))
        if not sep or not dn:
            problems.append(f"{entry!r} is not role=group DN")
        elif role not in ROLES:
            problems.append(f"{role!r} is not a role ({', '.join(ROLES)})")
        else:
            mapping.setdefault(role, []).append(dn)
    return mapping, problems


def roles_for(group_dns, mapping: dict[str, list[str]]) -> set[str]:
    """The roles that the directory groups ``group_dns`` grant (DNs compared without case)."""
    member_of = {dn.lower() for dn in group_dns}
    return {role for role, dns in mapping.items() if any(dn.lower() in member_of for dn in dns)}


def set_roles(user, granted: set[str]) -> None:
    """Give ``user`` exactly the role groups ``granted``; other (non-role) groups are left alone."""
    current = set(user.groups.filter(name__in=ROLES).values_list("name", flat=True))
    if current - granted:
        user.groups.remove(*Group.objects.filter(name__in=current - granted))
    if granted - current:
        # The role groups come from migration pacs.0002_roles; created here if someone removed one.
        user.groups.add(*(Group.objects.get_or_create(name=name)[0] for name in sorted(granted - current)))
    user._pacs_roles = None  # project.access caches a user's roles


def ldap_configuration() -> dict:
    """The LDAP_* settings as django-auth-ldap's configuration (its ``AUTH_LDAP_*`` names)."""
    options = {
        ldap.OPT_REFERRALS: 0,  # Active Directory answers with referrals that cannot be followed anonymously
        ldap.OPT_NETWORK_TIMEOUT: settings.LDAP_TIMEOUT_SECONDS,
        ldap.OPT_TIMEOUT: settings.LDAP_TIMEOUT_SECONDS,
    }
    if settings.LDAP_CA_CERTIFICATES:
        options[ldap.OPT_X_TLS_REQUIRE_CERT] = ldap.OPT_X_TLS_DEMAND
        options[ldap.OPT_X_TLS_CACERTFILE] = settings.LDAP_CA_CERTIFICATES
        options[ldap.OPT_X_TLS_NEWCTX] = 0  # last: builds the TLS context from the options above
    config = {
        "SERVER_URI": settings.LDAP_SERVER_URI,
        "BIND_DN": settings.LDAP_BIND_DN,
        "BIND_PASSWORD": unseal(settings.LDAP_BIND_PASSWORD),
        "START_TLS": settings.LDAP_START_TLS,
        "CONNECTION_OPTIONS": options,
        "USER_SEARCH": ldap_config.LDAPSearch(settings.LDAP_USER_SEARCH_BASE, ldap.SCOPE_SUBTREE,
                                              settings.LDAP_USER_SEARCH_FILTER),
        "USER_ATTR_MAP": {"first_name": "givenName", "last_name": "sn", "email": "mail"},
        "ALWAYS_UPDATE_USER": True,
    }
    if settings.LDAP_GROUP_SEARCH_BASE:
        group_type = GROUP_TYPES[settings.LDAP_GROUP_TYPE]()
        object_class = {"activedirectory": "group", "groupofnames": "groupOfNames",
                        "groupofuniquenames": "groupOfUniqueNames", "posixgroup": "posixGroup"}
        config["GROUP_SEARCH"] = ldap_config.LDAPSearch(
            settings.LDAP_GROUP_SEARCH_BASE, ldap.SCOPE_SUBTREE, f"(objectClass={object_class[settings.LDAP_GROUP_TYPE]})")
        config["GROUP_TYPE"] = group_type
    return config


class DirectoryBackend(ldap_backend.LDAPBackend):
    """django-auth-ldap's backend, configured from the LDAP_* settings; off without LDAP_SERVER_URI."""

    @property
    def settings(self):
        if self._settings is None:
            self._settings = ldap_backend.LDAPSettings(self.settings_prefix, ldap_configuration())
        return self._settings

    @settings.setter
    def settings(self, value):
        self._settings = value

    def authenticate(self, request, username=None, password=None, **kwargs):
        if not settings.LDAP_SERVER_URI:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)

    def authenticate_ldap_user(self, ldap_user, password):
        user = super().authenticate_ldap_user(ldap_user, password)
        if user is None:
            return None
        mapping, _problems = parse_role_groups(settings.LDAP_ROLE_GROUPS)
        try:
            granted = roles_for(ldap_user.group_dns, mapping)
        except ldap.LDAPError as exc:
            # Signed in, but the roles cannot be known: refuse rather than keep stale roles.
            log.warning("directory groups could not be read", extra={"error": type(exc).__name__})
            _mark_unavailable(ldap_user._request)
            return None
        set_roles(user, granted)
        return user


def _mark_unavailable(request) -> None:
    if request is not None:
        request.pacs_directory_unavailable = True


@receiver(ldap_backend.ldap_error, dispatch_uid="accounts.directory.unavailable")
def _directory_error(sender, context=None, request=None, exception=None, **kwargs):
    """The directory did not answer (down, TLS refused, bind account rejected): the sign-in page
    says so (accounts.signin.SignInForm) and local accounts are still tried."""
    log.warning("directory error", extra={"context": context, "error": type(exception).__name__})
    _mark_unavailable(request)


@register(Tags.compatibility)
def check_directory(app_configs, **kwargs):
    """pacs.E030 at every start: directory settings that cannot work (wrong role mapping, no user
    search base, a CA file that is not there) stop the process rather than refuse every sign-in."""
    if not settings.LDAP_SERVER_URI:
        return []
    _mapping, problems = parse_role_groups(settings.LDAP_ROLE_GROUPS)
    problems = [f"LDAP_ROLE_GROUPS: {p}" for p in problems]
    if not settings.LDAP_SERVER_URI.lower().startswith(("ldap://", "ldaps://")):
        problems.append("LDAP_SERVER_URI must start with ldap:// or ldaps://")
    if not settings.LDAP_USER_SEARCH_BASE:
        problems.append("LDAP_USER_SEARCH_BASE is required with LDAP_SERVER_URI")
    if settings.LDAP_CA_CERTIFICATES and not os.access(settings.LDAP_CA_CERTIFICATES, os.R_OK):
        problems.append(f"LDAP_CA_CERTIFICATES={settings.LDAP_CA_CERTIFICATES!r} cannot be read")
    return [Error(p, hint="See README.md, Accounts and sign-in.", id="pacs.E030") for p in problems]
