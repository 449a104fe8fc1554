"""The admin pages of records (the audit trail and its export cursors, the RIS status history):
shown, never added or changed through the admin.  The audit trail is for administrators only
(DICOM PS3.15 A.5: the trail names who saw which patient); its export cursors may be deleted by
them to retire a repository."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.test import RequestFactory

from audit.models import AuditExport, AuditRecord
from project.access import ADMINISTRATOR, RADIOLOGIST
from ris.models import StatusChange
from tests import factories

pytestmark = pytest.mark.django_db


def _request(user):
    request = RequestFactory().get("/admin/")
    request.user = user
    return request


@pytest.mark.parametrize("model", [AuditRecord, AuditExport, StatusChange])
def test_records_are_never_added_or_changed_in_the_admin(model):
    model_admin = admin.site._registry[model]
    request = _request(factories.user("boss", ADMINISTRATOR))
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request)


def test_the_audit_trail_is_seen_by_administrators_only_and_never_deleted():
    records, cursors = admin.site._registry[AuditRecord], admin.site._registry[AuditExport]
    administrator, radiologist = factories.user("boss", ADMINISTRATOR), factories.user("rad", RADIOLOGIST)
    radiologist.is_staff = True
    for model_admin in (records, cursors):
        assert model_admin.has_view_permission(_request(administrator))
        assert model_admin.has_module_permission(_request(administrator))
        assert not model_admin.has_view_permission(_request(radiologist))
    assert not records.has_delete_permission(_request(administrator))
    assert cursors.has_delete_permission(_request(administrator))  # retires a repository
    assert not cursors.has_delete_permission(_request(radiologist))


def test_status_changes_are_never_deleted_in_the_admin():
    superuser = factories.user("root")
    superuser.is_superuser = superuser.is_staff = True
    assert not admin.site._registry[StatusChange].has_delete_permission(_request(superuser))
