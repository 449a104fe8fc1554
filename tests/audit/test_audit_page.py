"""The audit page (/audit/): who may open it, search, one record, "who saw this patient", the CSV
export, its own use on the trail, the chain's status, retention and the last purge."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from audit import chain, tasks, trail
from audit.models import AuditRecord, ChainCheck
from project.access import ADMINISTRATOR, PRIVACY_OFFICER, RADIOLOGIST, RESIDENT, ROLES, TECHNOLOGIST
from project.auditing import events
from tests import factories

PAGES = ["/audit/", "/audit/who-saw/?patient_id=PAT-A", "/audit/export.csv"]


def _user(name: str, role: str | None) -> User:
    return factories.user(name, *([role] if role else []))


def _client(user: User, address: str = "10.20.30.40") -> Client:
    client = Client(REMOTE_ADDR=address)
    client.force_login(user)
    return client


def _read(patient, actor, *, when=None, event=events.PROCEDURE_RECORD, action=events.READ, address="10.9.9.9",
          study="1.2.826.0.1.3680043.10.543.1"):
    return trail.record(event, action=action, actor=actor, actor_kind=events.USER, source_address=address,
                        patients=[patient], objects=[{"type": "study", "id": study}], occurred_at=when)


def _ids(html: str, table: str) -> list[int]:
    body = html.split(f'id="{table}"', 1)[1].split("</table>", 1)[0]
    return [int(x) for x in re.findall(r'data-record="(\d+)"', body)]


def _page_uses(view: str) -> list[AuditRecord]:
    assert trail.flush(timeout=30)
    return [r for r in AuditRecord.records.filter(event_id=events.AUDIT_LOG_USED.value).order_by("id")
            if r.detail.get("view") == view]


@pytest.mark.django_db
@pytest.mark.parametrize("role", [RADIOLOGIST, RESIDENT, TECHNOLOGIST, None])
def test_the_page_is_denied_to_every_other_role(role):
    client = _client(_user("someone", role))
    for url in PAGES + [f"/audit/records/{_read(('PAT-A', ''), 'rad1').pk}/"]:
        assert client.get(url).status_code == 403, url
    assert _page_uses("search") == []


@pytest.mark.django_db
@pytest.mark.parametrize("role", [PRIVACY_OFFICER, ADMINISTRATOR])
def test_privacy_officers_and_administrators_open_it(role):
    client = _client(_user("auditor", role))
    record = _read(("PAT-A", ""), "rad1")
    for url in PAGES + [f"/audit/records/{record.pk}/"]:
        assert client.get(url).status_code == 200, url
    assert Client().get("/audit/").status_code == 302  # anonymous: to the login page


@pytest.mark.django_db
def test_a_privacy_officer_sees_no_other_page():
    assert PRIVACY_OFFICER in ROLES
    client = _client(_user("po", PRIVACY_OFFICER))
    for url in ("/", "/monitoring/", "/imaging/transfers/", "/interfaces/", "/reading/studies/1/"):
        assert client.get(url).status_code == 403, url
    assert client.get("/admin/").status_code == 302  # not staff: the admin's own login


@pytest.mark.django_db
def test_search_by_patient_returns_the_records_naming_that_patient():
    a1 = _read(("PAT-A", "HOSP"), "rad1")
    b1 = _read(("PAT-B", "HOSP"), "rad1")
    a2 = trail.record(events.PATIENT_RECORD, action=events.UPDATE, actor="EHR^HOSP", actor_kind=events.HL7,
                      patients=[("PAT-A", "HOSP"), ("PAT-C", "HOSP")])
    other_issuer = _read(("PAT-A", "CLINIC"), "rad2")
    client = _client(_user("po", PRIVACY_OFFICER))
    html = client.get("/audit/", {"patient_id": "PAT-A", "issuer": "HOSP"}).content.decode()
    assert _ids(html, "audit-rows") == [a2.pk, a1.pk]  # newest first, HOSP's only
    html = client.get("/audit/", {"patient_id": "PAT-A"}).content.decode()
    made = {a1.pk, a2.pk, b1.pk, other_issuer.pk}  # not the page's own records of its use
    assert [i for i in _ids(html, "audit-rows") if i in made] == [other_issuer.pk, a2.pk, a1.pk]  # any issuer
    html = client.get("/audit/", {"patient_id": "PAT-B"}).content.decode()
    assert [i for i in _ids(html, "audit-rows") if i in made] == [b1.pk]


@pytest.mark.django_db
def test_search_by_actor_ae_title_event_outcome_and_dates():
    now = timezone.now()
    old = _read(("PAT-A", ""), "rad1", when=now - dt.timedelta(days=10))
    new = _read(("PAT-A", ""), "rad1")
    other = _read(("PAT-A", ""), "rad2")
    mwl = trail.record(events.QUERY, action=events.EXECUTE, actor="CT1", actor_kind=events.DICOM, destination="PACS",
                       objects=[{"type": "query", "id": "1.2.840.10008.5.1.4.31"}])
    refused = trail.record(events.SECURITY_ALERT, event_type=events.NODE_AUTHENTICATION, action=events.EXECUTE,
                           outcome=events.SERIOUS_FAILURE, actor="ROGUE", actor_kind=events.DICOM)
    client = _client(_user("po", PRIVACY_OFFICER))

    def ids(**query):
        response = client.get("/audit/", query)
        assert response.status_code == 200
        return _ids(response.content.decode(), "audit-rows")

    assert ids(actor="rad1") == [new.pk, old.pk]
    assert ids(ae_title="CT1") == [mwl.pk]
    assert ids(ae_title="PACS") == [mwl.pk]  # the called AE title
    assert ids(event_id=events.QUERY.value) == [mwl.pk]
    assert ids(outcome="8") == [refused.pk]
    day = timezone.localdate(old.occurred_at).isoformat()
    assert ids(actor="rad1", date_from=day, date_to=day) == [old.pk]
    made = {old.pk, new.pk, other.pk, mwl.pk, refused.pk}  # not the page's own records of its use
    assert [i for i in ids(date_from=timezone.localdate().isoformat()) if i in made] == [
        refused.pk, mwl.pk, other.pk, new.pk]


@pytest.mark.django_db
def test_bad_criteria_are_refused_naming_the_field():
    client = _client(_user("po", PRIVACY_OFFICER))
    for query, field in (({"date_from": "yesterday"}, "date_from"), ({"outcome": "3"}, "outcome"),
                         ({"event_id": "999"}, "event_id"), ({"issuer": "HOSP"}, "issuer"),
                         ({"date_from": "2026-02-02", "date_to": "2026-02-01"}, "date_from")):
        response = client.get("/audit/", query)
        assert response.status_code == 400
        assert f"{field}:" in response.content.decode()
    assert _page_uses("search") == []


@pytest.mark.django_db
def test_pages_of_fifty_newest_first():
    first = timezone.now() - dt.timedelta(hours=1)
    made = [_read(("PAT-P", ""), "rad1", when=first + dt.timedelta(seconds=i)).pk for i in range(55)]
    client = _client(_user("po", PRIVACY_OFFICER))
    procedure = events.PROCEDURE_RECORD.value  # not the page's own records of its use
    page1 = client.get("/audit/", {"patient_id": "PAT-P", "event_id": procedure}).content.decode()
    assert _ids(page1, "audit-rows") == made[::-1][:50]
    assert 'rel="next"' in page1 and 'rel="prev"' not in page1
    page2 = client.get("/audit/", {"patient_id": "PAT-P", "event_id": procedure, "page": "2"}).content.decode()
    assert _ids(page2, "audit-rows") == made[::-1][50:]
    assert 'rel="next"' not in page2 and 'rel="prev"' in page2


@pytest.mark.django_db
def test_using_the_page_is_itself_on_the_trail():
    client = _client(_user("po", PRIVACY_OFFICER), address="192.0.2.44")
    record = _read(("PAT-A", "HOSP"), "rad1")
    client.get("/audit/", {"patient_id": "PAT-A", "issuer": "HOSP", "outcome": "0"})
    client.get(f"/audit/records/{record.pk}/")
    client.get("/audit/who-saw/", {"patient_id": "PAT-A", "issuer": "HOSP"})
    b"".join(client.get("/audit/export.csv", {"actor": "rad1"}).streaming_content)
    (search,) = _page_uses("search")
    assert (search.action, search.actor, search.actor_kind, search.source_address) == ("R", "po", "user", "192.0.2.44")
    assert search.detail == {"view": "search", "page": 1,
                             "criteria": {"patient_id": "PAT-A", "issuer": "HOSP", "outcome": 0}}
    # The answer showed the patient's identifiers: the look names the patient.
    assert list(search.patients.values_list("patient_id", "issuer")) == [("PAT-A", "HOSP")]
    (detail,) = _page_uses("record")
    assert detail.detail == {"view": "record", "record_id": record.pk}
    (seen,) = _page_uses("who_saw")
    assert seen.detail["criteria"]["patient_id"] == "PAT-A" and seen.detail["criteria"]["issuer"] == "HOSP"
    (export,) = _page_uses("export")
    assert export.detail == {"view": "export", "criteria": {"actor": "rad1"}, "patients_named": 1}
    # A search by user names no patient, yet the file does: the export names every patient in it.
    assert list(export.patients.values_list("patient_id", "issuer")) == [("PAT-A", "HOSP")]


@pytest.mark.django_db
def test_who_saw_a_patient_over_a_month():
    now = timezone.now()
    patient = ("PAT-W", "HOSP")
    _read(patient, "rad_long_ago", when=now - dt.timedelta(days=45))
    seen = _read(patient, "rad1", when=now - dt.timedelta(days=20), address="10.1.1.1")
    changed = trail.record(events.ORDER_RECORD, action=events.UPDATE, actor="tech1", actor_kind=events.USER,
                           source_address="10.1.1.2", patients=[patient],
                           objects=[{"type": "order", "id": "FL000042"}], occurred_at=now - dt.timedelta(days=2))
    sent = trail.record(events.EXPORT, action=events.READ, actor="PACS", actor_kind=events.SYSTEM, destination="EHR",
                        patients=[patient], occurred_at=now - dt.timedelta(hours=1))
    _read(("PAT-OTHER", "HOSP"), "rad_other")
    client = _client(_user("po", PRIVACY_OFFICER))
    html = client.get("/audit/who-saw/", {"patient_id": "PAT-W", "issuer": "HOSP"}).content.decode()
    assert _ids(html, "who-saw-rows") == [sent.pk, changed.pk, seen.pk]
    actors = html.split('id="who-saw-actors"', 1)[1].split("</p>", 1)[0]
    assert re.findall(r'class="actor">([^<]+)<', actors) == ["PACS", "rad1", "tech1"]
    assert "rad_long_ago" not in html and "rad_other" not in html
    row = html.split(f'data-record="{changed.pk}"', 1)[1].split("</tr>", 1)[0]
    assert "tech1" in row and "10.1.1.2" in row and "Order Record" in row and "Update" in row and "order FL000042" in row
    # A period of its own reaches further back.
    html = client.get("/audit/who-saw/", {"patient_id": "PAT-W", "issuer": "HOSP", "date_to": timezone.localdate(
        now - dt.timedelta(days=10)).isoformat(), "date_from": timezone.localdate(now - dt.timedelta(days=60)).isoformat(),
    }).content.decode()
    assert "rad_long_ago" in html and "tech1" not in html


@pytest.mark.django_db
def test_csv_export_of_a_search():
    a = _read(("PAT-A", "HOSP"), "rad1", study="1.2.3.4")
    _read(("PAT-B", "HOSP"), "rad1")
    trap = trail.record(events.USER_AUTHENTICATION, event_type=events.LOGIN, action=events.EXECUTE,
                        outcome=events.MINOR_FAILURE, actor="=HYPERLINK(1)", actor_kind=events.USER,
                        patients=[("PAT-A", "HOSP")])
    chain.seal()
    client = _client(_user("po", PRIVACY_OFFICER))
    response = client.get("/audit/export.csv", {"patient_id": "PAT-A"})
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="audit-')
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [int(r["id"]) for r in rows] == [trap.pk, a.pk]
    assert rows[1]["actor"] == "rad1" and rows[1]["patients"] == "PAT-A^^^HOSP"
    assert rows[1]["event"] == "Procedure Record" and '"1.2.3.4"' in rows[1]["objects"]
    assert rows[1]["seq"] == str(AuditRecord.records.get(pk=a.pk).seq) and len(rows[1]["record_hash"]) == 64
    assert rows[0]["actor"] == "'=HYPERLINK(1)"  # not a formula in a spreadsheet


@pytest.mark.django_db
def test_a_record_shows_its_participants_detail_and_place_in_the_chain():
    record = trail.record(events.PATIENT_RECORD, action=events.UPDATE, actor="EHR^HOSP", actor_kind=events.HL7,
                          source_address="10.5.5.5", patients=[("PAT-D", "HOSP")],
                          objects=[{"type": "order", "id": "PL1", "issuer": "EHR"}],
                          detail={"changed": ["PatientBirthDate"]})
    client = _client(_user("po", PRIVACY_OFFICER))
    html = client.get(f"/audit/records/{record.pk}/").content.decode()
    assert "not sealed yet" in html and "PAT-D^^^HOSP" in html and "order PL1 (EHR)" in html
    assert "PatientBirthDate" in html and "EHR^HOSP (hl7)" in html and "10.5.5.5" in html
    chain.seal()
    sealed = AuditRecord.records.get(pk=record.pk)
    html = client.get(f"/audit/records/{record.pk}/").content.decode()
    assert f"sealed: seq {sealed.seq}" in html and sealed.record_hash in html and sealed.prev_hash in html
    assert client.get("/audit/records/999999999/").status_code == 404


@pytest.mark.django_db(transaction=True)  # ALTER TABLE must not hold its lock while the page writes
def test_chain_status_comes_from_the_last_verification_not_from_the_view(settings):
    settings.AUDIT_RETENTION_DAYS = 400
    client = _client(_user("po", PRIVACY_OFFICER))
    _read(("PAT-A", ""), "rad1")
    html = client.get("/audit/").content.decode()
    assert "has not been verified yet" in html and "Retention: 400 days" in html and "Last purge: none" in html
    assert ChainCheck.objects.count() == 0  # the view verifies nothing
    chain.seal()
    assert tasks.verify() == 0  # the periodic task
    html = client.get("/audit/").content.decode()
    assert re.search(r"Chain verified [\d: -]+: \d+ records, no break", html)
    # A break found by the next verification is shown, with the record it is in.
    with _triggers_off():
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("UPDATE audit_auditrecord SET actor = 'someone else' WHERE actor = 'rad1'")
    assert tasks.verify() >= 1
    html = client.get("/audit/").content.decode()
    assert re.search(r"\d+ breaks? found", html) and "hash: record" in html
    assert ChainCheck.objects.count() == 2


@pytest.mark.django_db
def test_the_last_purge_and_its_anchor_are_shown():
    long_ago = timezone.now() - dt.timedelta(days=100)
    for i in range(3):
        _read(("PAT-OLD", ""), "rad1", when=long_ago + dt.timedelta(minutes=i))
    _read(("PAT-NEW", ""), "rad1")
    chain.seal()
    purged = chain.purge(timezone.now() - dt.timedelta(days=30), actor="audit.purge")
    assert purged == 3
    anchor = AuditRecord.records.get(event_id=events.AUDIT_LOG_USED.value, action=events.DELETE)
    html = _client(_user("po", PRIVACY_OFFICER)).get("/audit/").content.decode()
    status = html.split('id="chain-status"', 1)[1].split("</section>", 1)[0]
    assert f'href="/audit/records/{anchor.pk}/"' in status
    assert f"3 records before {anchor.detail['before']} (anchor seq {anchor.detail['anchor_seq']})" in status


class _triggers_off:
    """Bypass the append-only triggers the way an intruder with the table owner's rights would."""

    def __enter__(self):
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE audit_auditrecord DISABLE TRIGGER audit_record_guard")

    def __exit__(self, *exc):
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("ALTER TABLE audit_auditrecord ENABLE TRIGGER audit_record_guard")


@pytest.mark.django_db
def test_reading_the_trail_in_the_admin_is_on_the_trail_with_the_client_address(settings):
    """The admin's audit pages name the reader's address by the same rule as every page: behind a
    trusted proxy, the client of X-Forwarded-For; from anywhere else, the connection's address."""
    settings.WEB_TRUSTED_PROXIES = ["10.0.0.0/24"]
    record = _read(("PAT-ADM", "HOSP"), "rad1")
    admin_user = factories.user("root_admin", ADMINISTRATOR)
    admin_user.is_superuser = admin_user.is_staff = True
    admin_user.save()
    client = Client(REMOTE_ADDR="10.0.0.7")
    client.force_login(admin_user)
    assert client.get(f"/admin/audit/auditrecord/{record.pk}/change/",
                      HTTP_X_FORWARDED_FOR="192.0.2.61").status_code == 200
    assert client.get("/admin/audit/auditrecord/", HTTP_X_FORWARDED_FOR="192.0.2.62",
                      REMOTE_ADDR="10.9.9.1").status_code == 200  # not a proxy: its own address counts
    assert trail.flush(timeout=30)
    uses = [r for r in AuditRecord.records.filter(event_id=events.AUDIT_LOG_USED.value, actor="root_admin")
            .order_by("id")]
    assert [u.source_address for u in uses] == ["192.0.2.61", "10.9.9.1"]
    assert list(uses[0].patients.values_list("patient_id", "issuer")) == [("PAT-ADM", "HOSP")]
