"""Report rules against real PostgreSQL: signing per role, versions, addenda, critical results."""

from __future__ import annotations

import json

import pytest

from audit.models import AuditRecord
from hl7gateway.models.outbound import OutboundDestination, OutboundMessage
from project.access import ADMINISTRATOR, RADIOLOGIST, RESIDENT, TECHNOLOGIST
from project.auditing import events
from ris.models import Report, ReportTemplate, ReportVersion, StatusChange
from ris.services import reports
from tests.factories import reading as f
from worklist import services
from worklist.models import ReadingItem


@pytest.fixture(autouse=True)
def destinations(db, settings):
    """Two enabled ORU destinations (rows only: nothing is sent, no worker runs in these tests)."""
    settings.HL7_ORU_DESTINATIONS = ""
    return [OutboundDestination.objects.create(name=n, host="127.0.0.1", port=p) for n, p in (("billing", 1),
                                                                                              ("ehr", 2))]


@pytest.fixture
def people(db):
    return {
        "rad": f.user("rad", RADIOLOGIST, first_name="Rita", last_name="Reader"),
        "res": f.user("res", RESIDENT, first_name="Rob", last_name="Resident"),
        "tech": f.user("tech", TECHNOLOGIST),
        "admin": f.user("adm", ADMINISTRATOR),
    }


def test_draft_starts_from_procedure_template(people):
    ReportTemplate.objects.create(name="default", findings="Normal.", impression="No acute findings.")
    ReportTemplate.objects.create(name="CT head", procedure_code_value="CTHEAD", findings="Brain: normal.",
                                  impression="No intracranial haemorrhage.")
    rp = f.study(code="CTHEAD")
    draft = reports.open_draft(rp.pk, people["rad"])
    assert draft.findings == "Brain: normal." and not draft.is_signed
    other = f.study(code="XRCHEST", modality="CR")
    assert reports.open_draft(other.pk, people["rad"]).findings == "Normal."


def test_autosave_keeps_one_draft(people):
    rp = f.study()
    for i in range(3):
        reports.save_draft(rp.pk, people["res"], findings=f"text {i}", impression="imp")
    versions = ReportVersion.objects.filter(report__requested_procedure=rp)
    assert versions.count() == 1 and versions.get().findings == "text 2"
    assert ReadingItem.objects.get(requested_procedure=rp).report_status == "DRAFT"


def test_each_autosave_is_on_the_trail_naming_the_fields_not_their_text(people):
    rp = f.study()
    reports.save_draft(rp.pk, people["res"], findings="Secret finding words", impression="imp")
    reports.save_draft(rp.pk, people["res"], impression="imp 2")
    saves = [r for r in AuditRecord.records.filter(event_id=events.PROCEDURE_RECORD.value, action=events.UPDATE)
             .order_by("id") if "fields" in r.detail]
    assert [(r.actor, r.detail["fields"], r.detail["version"]) for r in saves] == [
        ("res", ["findings", "impression"], 1), ("res", ["impression"], 1)]
    for record in saves:
        assert record.patients.exists()
        assert "Secret finding words" not in json.dumps(record.detail) + json.dumps(record.objects)


@pytest.mark.parametrize("role,kind,allowed", [
    ("res", "PRELIMINARY", True), ("res", "FINAL", False), ("rad", "PRELIMINARY", True), ("rad", "FINAL", True),
    ("tech", "PRELIMINARY", False), ("tech", "FINAL", False), ("admin", "FINAL", False),
])
def test_signing_rules_per_role(people, role, kind, allowed):
    rp = f.study()
    user = people[role]
    if allowed:
        v = reports.sign(rp.pk, user, kind, findings="Findings.", impression="Impression.")
        assert v.result_status == {"PRELIMINARY": "P", "FINAL": "F"}[kind]
        assert v.signed_by == user and v.signed_at is not None
    else:
        with pytest.raises(reports.ReportPermissionDenied):
            reports.sign(rp.pk, user, kind, findings="Findings.", impression="Impression.")
        assert not ReportVersion.objects.filter(signed_at__isnull=False).exists()
        assert not OutboundMessage.objects.exists()


def test_preliminary_then_final_then_addendum_keeps_every_version(people):
    rp = f.study()
    services.claim_study(rp.pk, people["res"])
    prelim = reports.sign(rp.pk, people["res"], "PRELIMINARY", findings="Prelim findings.", impression="Prelim.")
    assert prelim.signer_name == "Resident^Rob"
    item = ReadingItem.objects.get(requested_procedure=rp)
    assert item.report_status == "PRELIMINARY" and not item.is_read
    assert services.active_claim(rp.pk) is None  # signing released the resident's claim
    services.claim_study(rp.pk, people["rad"])
    final = reports.sign(rp.pk, people["rad"], "FINAL", findings="Final findings.", impression="Final.")
    assert (final.version_number, final.result_status) == (2, "F")
    with pytest.raises(reports.ReportError):
        reports.sign(rp.pk, people["rad"], "FINAL", findings="again")
    with pytest.raises(reports.ReportPermissionDenied):
        reports.sign(rp.pk, people["res"], "ADDENDUM", addendum="resident addendum")
    with pytest.raises(reports.ReportError):
        reports.sign(rp.pk, people["rad"], "ADDENDUM", addendum="  ")
    add = reports.sign(rp.pk, people["rad"], "ADDENDUM", addendum="Comparison with prior: unchanged.",
                       findings="attempt to rewrite")
    assert add.result_status == "C" and add.kind == "ADDENDUM"
    assert add.findings == "Final findings." and add.addendum == "Comparison with prior: unchanged."
    final.refresh_from_db()
    prelim.refresh_from_db()
    assert (final.findings, final.impression, final.addendum, final.result_status) == (
        "Final findings.", "Final.", "", "F")
    assert prelim.findings == "Prelim findings."
    assert [v.kind for v in reports.history(rp.pk)] == ["PRELIMINARY", "FINAL", "ADDENDUM"]
    # One outbound ORU^R01 per signature and destination, committed with the signature.
    rows = OutboundMessage.objects.order_by("report_version__version_number", "destination__name")
    assert [(m.report_version.version_number, m.destination.name, m.result_status) for m in rows] == [
        (1, "billing", "P"), (1, "ehr", "P"), (2, "billing", "F"), (2, "ehr", "F"), (3, "billing", "C"),
        (3, "ehr", "C")]
    report = Report.objects.get(requested_procedure=rp)
    assert report.status == "ADDENDED"
    assert list(StatusChange.objects.filter(entity="report", object_id=report.pk).values_list(
        "from_status", "to_status")) == [("DRAFT", "PRELIMINARY"), ("PRELIMINARY", "FINAL"), ("FINAL", "ADDENDED")]
    item.refresh_from_db()
    assert item.report_status == "ADDENDED" and item.is_read


def test_addendum_before_final_is_refused(people):
    rp = f.study()
    with pytest.raises(reports.ReportError):
        reports.sign(rp.pk, people["rad"], "ADDENDUM", addendum="too early")


def test_critical_result_needs_recipient(people):
    rp = f.study()
    with pytest.raises(reports.ReportError):
        reports.sign(rp.pk, people["rad"], "FINAL", findings="PE.", critical_result=True)
    v = reports.sign(rp.pk, people["rad"], "FINAL", findings="Pulmonary embolism.", critical_result=True,
                     critical_communicated_to="Dr Ward (ED), phone")
    assert v.critical_result and v.critical_communicated_to == "Dr Ward (ED), phone"
    assert v.critical_communicated_at is not None


def test_signature_and_outbox_roll_back_together(people):
    """The database refuses the outbound row (a trigger stands in for a full disk or a lost
    connection): the signature is not committed either -- one transaction, no half state."""
    from django.db import DatabaseError, connection

    rp = f.study()
    with connection.cursor() as cur:
        cur.execute("""CREATE FUNCTION refuse_outbound() RETURNS trigger LANGUAGE plpgsql AS
                       $$ BEGIN RAISE EXCEPTION 'outbox refused by test'; END $$""")
        cur.execute("""CREATE TRIGGER refuse_outbound BEFORE INSERT ON hl7gateway_outboundmessage
                       FOR EACH ROW EXECUTE FUNCTION refuse_outbound()""")
    with pytest.raises(DatabaseError):
        reports.sign(rp.pk, people["rad"], "FINAL", findings="Text.")
    assert not ReportVersion.objects.filter(signed_at__isnull=False).exists()
    assert not Report.objects.exclude(status="DRAFT").exists()
    assert ReadingItem.objects.get(requested_procedure=rp).report_status == "UNREAD"


def test_empty_report_cannot_be_signed(people):
    rp = f.study()
    with pytest.raises(reports.ReportError):
        reports.sign(rp.pk, people["rad"], "FINAL", findings=" ", impression="")


def test_other_users_claim_blocks_changes(people):
    rp = f.study()
    services.claim_study(rp.pk, people["res"])
    with pytest.raises(reports.ReportPermissionDenied):
        reports.save_draft(rp.pk, people["rad"], findings="mine")
    with pytest.raises(reports.ReportPermissionDenied):
        reports.sign(rp.pk, people["rad"], "FINAL", findings="mine")
    assert not ReportVersion.objects.exists()


def test_text_too_long_is_refused(people):
    rp = f.study()
    with pytest.raises(reports.ReportError):
        reports.sign(rp.pk, people["rad"], "FINAL", findings="x" * (reports.MAX_TEXT + 1))
    assert not ReportVersion.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_two_final_signatures_at_once_only_one_wins(destinations):
    """Browser and dictation system sign the same study at the same moment: the report row lock
    serializes them; one FINAL version, the other gets a clear refusal."""
    import threading

    from django.db import connection

    rp = f.study()
    users = [f.user("rad_x", RADIOLOGIST), f.user("rad_y", RADIOLOGIST)]
    barrier = threading.Barrier(2)
    outcomes = []

    def worker(user):
        try:
            barrier.wait()
            reports.sign(rp.pk, user, "FINAL", findings=f"by {user.username}")
            outcomes.append("signed")
        except reports.ReportError as exc:
            outcomes.append(f"refused: {exc}")
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(o.split(":")[0] for o in outcomes) == ["refused", "signed"], outcomes
    assert ReportVersion.objects.filter(kind="FINAL", signed_at__isnull=False).count() == 1
    assert OutboundMessage.objects.count() == 2  # one per destination, for the one signature
