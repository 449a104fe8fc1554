"""Directory sign-in against a real OpenLDAP slapd (tests/support/ldap_server.py), through the sign-in page."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from accounts.directory import parse_role_groups
from accounts.signin import DIRECTORY_UNAVAILABLE
from project.encryption import seal
from tests.support.ldap_server import PASSWORD, RADIOLOGISTS

LOGIN = "/accounts/login/"


def sign_in(client, username, password):
    return client.post(LOGIN, {"username": username, "password": password})


def roles_of(username: str) -> set[str]:
    return set(User.objects.get(username=username).groups.values_list("name", flat=True))


@pytest.mark.django_db
def test_a_directory_radiologist_signs_in_with_the_radiologist_role(directory_settings):
    client = Client()
    assert sign_in(client, "drad", PASSWORD).status_code == 302
    assert client.get("/").status_code == 200
    user = User.objects.get(username="drad")
    assert roles_of("drad") == {"radiologist"}  # the unmapped group "cafeteria" gives nothing
    assert (user.first_name, user.last_name, user.email) == ("Dana", "Radiology", "drad@example.org")
    assert not user.has_usable_password()  # no local password: the directory decides


@pytest.mark.django_db
def test_a_directory_user_in_no_mapped_group_has_no_role_and_is_denied(directory_settings):
    client = Client()
    assert sign_in(client, "nogroup", PASSWORD).status_code == 302
    assert roles_of("nogroup") == set()
    assert client.get("/").status_code == 403


@pytest.mark.django_db
def test_roles_follow_the_directory_at_every_sign_in(directory_settings, settings):
    sign_in(Client(), "drad", PASSWORD)
    assert roles_of("drad") == {"radiologist"}
    settings.LDAP_ROLE_GROUPS = f"resident={RADIOLOGISTS}"
    sign_in(Client(), "drad", PASSWORD)
    assert roles_of("drad") == {"resident"}


@pytest.mark.django_db
def test_a_wrong_directory_password_fails_and_counts_towards_the_lockout(directory_settings):
    client = Client()
    for _ in range(4):
        response = sign_in(client, "drad", "wrong")
        assert response.status_code == 200
        assert "correct username and password" in response.content.decode()
    assert sign_in(client, "drad", "wrong").status_code == 429
    assert sign_in(client, "drad", PASSWORD).status_code == 429


@pytest.mark.django_db
def test_a_sealed_bind_password_is_opened(directory_settings, settings):
    settings.LDAP_BIND_PASSWORD = seal(settings.LDAP_BIND_PASSWORD)
    assert settings.LDAP_BIND_PASSWORD.startswith("fernet:")
    assert sign_in(Client(), "drad", PASSWORD).status_code == 302


@pytest.mark.django_db
def test_directory_down_says_so_and_local_accounts_still_work(directory_settings, settings):
    from tests.support.net import free_port

    settings.LDAP_SERVER_URI = f"ldap://127.0.0.1:{free_port()}"  # nothing listens there
    response = sign_in(Client(), "drad", PASSWORD)
    assert response.status_code == 200
    assert DIRECTORY_UNAVAILABLE in response.content.decode()

    local = User.objects.create_user("localtech", password="pw-For-Tests-1")
    local.groups.add(Group.objects.get(name="technologist"))
    client = Client()
    assert sign_in(client, "localtech", "pw-For-Tests-1").status_code == 302
    assert client.get("/").status_code == 200


def test_role_groups_are_parsed_at_semicolons_and_checked():
    mapping, problems = parse_role_groups(
        "radiologist=CN=Radiologists,OU=Groups,DC=hospital,DC=example; administrator=CN=PACS Admins,DC=x;"
        "radiologist=CN=Rad Night,DC=x;surgeon=CN=S,DC=x;broken")
    assert mapping == {"radiologist": ["CN=Radiologists,OU=Groups,DC=hospital,DC=example", "CN=Rad Night,DC=x"],
                       "administrator": ["CN=PACS Admins,DC=x"]}
    assert len(problems) == 2 and "'surgeon' is not a role" in problems[0]
