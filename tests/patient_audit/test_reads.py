"""Every look at patient data in the browser, the API and the admin is on record (PS3.15 A.5.3):
the pages one by one, and a walk over every URL of the project with fixture data."""

from __future__ import annotations

import secrets

import pytest
from django.apps import apps
from django.contrib import admin
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from audit.models import AuditPatient, AuditRecord
from hl7gateway.intake import handle_payload
from hl7gateway.models import InboundMessage, OutboundMessage
from hl7gateway.outbox import enqueue
from pacs.models import Instance, PerformedProcedureStep, Prior, Series, Study, StudyLink, Transfer, VnaDestination
from pacs.models import images as im
from project.auditing import events
from ris.audited_admin import AuditedAdmin
from ris.models import Patient, PatientMerge, ReportTemplate, StatusChange
from tests.factories import oru as oh
from tests.factories import reading as factories
from worklist import services as worklist_services
from worklist.models import ApiToken

pytestmark = pytest.mark.django_db

MRN, ISSUER, FAMILY = "WALK0001", "HOSP", "WALKERSON"
RETIRED_MRN = "WALKOLD1"


@pytest.fixture
def world(db, tmp_var):
    """One invented patient whose data is on every page: order, reading item, signed preliminary
    report and its ORU, a technical charge, a received study (linked) and an unmatched one, a transfer, an MPPS, a
    merge, a status change, a failed inbound message, a claim."""
    reader = oh.radiologist("walkreader")
    superuser = factories.user("walkadmin")
    superuser.is_superuser = superuser.is_staff = True
    superuser.save()
    patient = oh.patient(name=f"{FAMILY}^PAULA", mrn=MRN, issuer=ISSUER)
    rp = oh.study(for_patient=patient)
    worklist_services.mark_ready_for_reading(rp.pk)
    oh.destination("ehr", 9, sends_charges=True)
    oh.sign_report(rp, reader, "PRELIMINARY")
    enqueue.enqueue_charge(rp.pk, "technical")  # a charge to billing, for the charges page
    worklist_services.claim_study(rp.pk, reader)
    now = timezone.now()
    study = Study.objects.create(study_instance_uid=rp.study_instance_uid, accession_number=rp.accession_number,
                                 patient_id=MRN, issuer_of_patient_id=ISSUER, requested_procedure=rp,
                                 last_received_at=now, status=im.COMPLETE)
    unmatched = Study.objects.create(study_instance_uid="2.25.4242", accession_number="UNM-W1", patient_id=MRN,
                                     issuer_of_patient_id=ISSUER, last_received_at=now)
    series = Series.objects.create(study=study, series_instance_uid="2.25.4243")
    Instance.objects.create(study=study, series=series, sop_instance_uid="2.25.4244", sop_class_uid="1.2.3",
                            transfer_syntax_uid="1.2.840.10008.1.2.1", path="x", size=1, batch=1, received_at=now)
    StudyLink.objects.create(study=study, requested_procedure=rp, actor="walkadmin")
    vna = VnaDestination.objects.create(name="vna-walk", ae_title="VNA", host="127.0.0.1", port=1)
    Transfer.objects.create(study=study, destination=vna, batch=1, next_attempt_at=now)
    # A prior of the order, held by the VNA under the patient's ID, for the priors page.
    Prior.objects.create(requested_procedure=rp, study_instance_uid="2.25.4246", patient_id=MRN,
                         issuer_of_patient_id=ISSUER, accession_number="PRI-W1", source=vna)
    PerformedProcedureStep.objects.create(sop_instance_uid="2.25.4245", accession_number=rp.accession_number,
                                          patient_id=MRN, patient_name=f"{FAMILY}^PAULA")
    retired = Patient.objects.create(patient_name=f"{FAMILY}^OLD", merged_into=patient)
    retired.identifiers.create(id_number=RETIRED_MRN, assigning_authority=ISSUER)
    PatientMerge.objects.create(survivor=patient, retired=retired, retired_patient_id=RETIRED_MRN,
                                retired_issuer_of_patient_id=ISSUER, cause="test")
    step = rp.steps.get()
    StatusChange.objects.create(entity="sps", object_id=step.pk, from_status="SCHEDULED", to_status="COMPLETED",
                                cause="test", actor="test")
    # A cancel for an unknown order, for this patient: stored with its AE (replayable).
    raw = (f"MSH|^~\\&|EHR|HOSP|PACS|RAD|20250301||ORM^O01|WALK-CA-1|P|2.3.1\r"
           f"PID|1||{MRN}^^^{ISSUER}^MR||{FAMILY}^PAULA||19800101|F\r"
           "ORC|CA|NOPE1^EHR\rOBR|1|NOPE1^EHR||CT^CT\r").encode()
    assert b"|AE|" in handle_payload(raw, "")
    return {"template": ReportTemplate.objects.create(name="walk template"), "patient": patient, "rp": rp, "study": study, "unmatched": unmatched, "reader": reader,
            "admin": superuser, "inbound": InboundMessage.objects.get(message_control_id="WALK-CA-1"),
            "outbound": OutboundMessage.objects.get(patient=patient, kind="ORU"),
            "transfer": Transfer.objects.get(study=study)}


def _new_records_naming(since_id: int, mrn: str = MRN):
    return AuditRecord.records.filter(id__gt=since_id, patients__patient_id=mrn).distinct()


def _last_id() -> int:
    return AuditRecord.records.order_by("-id").values_list("id", flat=True).first() or 0


def test_reading_list_search_writes_a_query_listing_the_patients(client, world):
    client.force_login(world["reader"])
    since = _last_id()
    response = client.get(reverse("worklist:list"), {"q": FAMILY, "status": "ALL"})
    assert response.status_code == 200 and FAMILY.encode() in response.content.upper()
    [query] = AuditRecord.records.filter(id__gt=since, event_id=events.QUERY.value)
    assert query.action == events.READ and query.actor == "walkreader" and query.actor_kind == events.USER
    assert query.source_address == "127.0.0.1"
    assert (MRN, ISSUER) in set(query.patients.values_list("patient_id", "issuer"))
    asked = [o for o in query.objects if o["type"] == "query"][0]["detail"]
    assert asked["q"] == FAMILY and asked["status"] == "ALL"


def test_study_page_writes_a_procedure_record_read(client, world):
    client.force_login(world["reader"])
    since = _last_id()
    response = client.get(reverse("worklist:study", args=[world["rp"].pk]))
    assert response.status_code == 200
    [read] = AuditRecord.records.filter(id__gt=since, event_id=events.PROCEDURE_RECORD.value, action=events.READ)
    assert set(read.patients.values_list("patient_id", "issuer")) == {(MRN, ISSUER)}
    assert {"type": "accession", "id": world["rp"].accession_number} in read.objects


def test_client_address_from_a_trusted_proxy_only(client, world, settings):
    client.force_login(world["reader"])
    settings.WEB_TRUSTED_PROXIES = ["127.0.0.1/32"]
    since = _last_id()
    client.get(reverse("worklist:study", args=[world["rp"].pk]), HTTP_X_FORWARDED_FOR="203.0.113.9, 198.51.100.4")
    assert _new_records_naming(since).get().source_address == "198.51.100.4"
    settings.WEB_TRUSTED_PROXIES = []
    since = _last_id()
    client.get(reverse("worklist:study", args=[world["rp"].pk]), HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert _new_records_naming(since).get().source_address == "127.0.0.1"


def test_report_api_get_writes_a_read_record_for_the_tokens_user(client, world):
    key = secrets.token_urlsafe(24)
    ApiToken.objects.create(user=world["reader"], name="walk dictation", key_sha256=ApiToken.digest(key))
    since = _last_id()
    response = client.get(reverse("worklist:api_report", args=[world["rp"].accession_number]),
                          HTTP_AUTHORIZATION=f"Token {key}")
    assert response.status_code == 200
    [read] = _new_records_naming(since)
    assert (read.event_id, read.action, read.actor) == (events.PROCEDURE_RECORD.value, events.READ, "walkreader")


def test_admin_patient_change_view_reads_and_save_updates(client, world):
    client.force_login(world["admin"])
    patient = world["patient"]
    url = reverse("admin:ris_patient_change", args=[patient.pk])
    since = _last_id()
    assert client.get(url).status_code == 200
    [read] = _new_records_naming(since)
    assert (read.event_id, read.action, read.actor) == (events.PATIENT_RECORD.value, events.READ, "walkadmin")

    since = _last_id()
    context = client.get(url).context
    form = context["adminform"].form
    data = {name: form[name].value() for name in form.fields}
    data.update({"patient_name": f"{FAMILY}^PAULINE", "patient_birth_date": "1980-01-02"})
    for inline in context["inline_admin_formsets"]:
        formset = inline.formset
        data.update({f"{formset.prefix}-{k}": v for k, v in formset.management_form.initial.items()})
        for f in formset.forms:
            data.update({f.add_prefix(name): f[name].value() for name in f.fields})
    data = {k: "" if v is None else v for k, v in data.items() if v is not False}
    response = client.post(url, data)
    assert response.status_code == 302, response.content[:2000]
    update = _new_records_naming(since).get(action=events.UPDATE)
    assert update.event_id == events.PATIENT_RECORD.value and update.actor == "walkadmin"
    assert update.detail["changed"]["patient_name"] == {"old": f"{FAMILY}^PAULA", "new": f"{FAMILY}^PAULINE"}
    assert update.detail["via"] == "admin"


# --- The walk over every URL -----------------------------------------------------------------------

# Views that show no patient data (a record would name nobody): each says why.  The walk asserts
# that their answer really contains none of the fixture patient's identifiers or name.
NO_PATIENT_DATA = {
    "health": "database and broker status",
    "metrics": "Prometheus counters",
    "monitoring:metrics": "Prometheus counters",
    "login": "the login form",
    "logout": "signs out",
    "monitoring:console": "counts, AE titles, ages; unmatched studies by accession number only",
    "worklist:templates": "report templates",
    "worklist:template_new": "report template form",
    "worklist:template_edit": "report template form",
}

# Views walked by tests of their own, with the credentials and stored images they need: the
# DICOMweb resources (searches audited as Query, retrievals as DICOM Instances Accessed:
# tests/pacs/test_dicomweb_qido.py, test_dicomweb_client.py) and the built-in viewer's files (no
# patient data; what it shows comes through DICOMweb: tests/e2e/test_viewer.py).
WALKED_ELSEWHERE = ("dicomweb:", "worklist:viewer")

# Query strings that make a list or search page show the fixture patient.
QUERIES = {"monitoring:journey": lambda w: {"accession": w["rp"].accession_number},
           "worklist:list": lambda w: {"status": "ALL"},
           # The audit page: "who saw" and the export of a search, for the fixture patient.
           "audit:who_saw": lambda w: {"patient_id": MRN},
           "audit:export": lambda w: {"patient_id": MRN}}


def _patterns(resolver, prefix="", namespace=""):
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            if entry.app_name == "admin":
                continue  # walked through admin.site's registry below
            ns = f"{entry.namespace}:" if entry.namespace else namespace
            yield from _patterns(entry, prefix + str(entry.pattern), ns)
        elif isinstance(entry, URLPattern):
            yield f"{namespace}{entry.name}" if entry.name else prefix + str(entry.pattern), entry


def _kwargs(name: str, pattern: URLPattern, w) -> dict | None:
    values = {"study_id": w["unmatched"].pk, "requested_procedure_id": w["rp"].pk,
              "transfer_id": w["transfer"].pk, "accession_number": w["rp"].accession_number,
              "template_id": w["template"].pk, "filter_id": 1,
              "message_id": w["inbound"].pk if "inbound" in name else w["outbound"].pk,
              # The audit page's record view: the latest record naming the patient (the walk's own).
              "record_id": AuditRecord.records.filter(patients__patient_id=MRN).order_by("-id")
              .values_list("id", flat=True).first()}
    names = pattern.pattern.converters.keys() if hasattr(pattern.pattern, "converters") else []
    return {k: values[k] for k in names if values.get(k) is not None}


def _shows_patient(content: bytes) -> bool:
    text = content.upper()
    return MRN.encode() in text or FAMILY.encode() in text or RETIRED_MRN.encode() in text


def test_every_view_that_shows_patient_data_writes_a_record_naming_the_patient(client, world):
    client.force_login(world["admin"])
    world["admin"].groups.add(*world["reader"].groups.all())  # every role: every page opens
    missing, visited, unexpected = [], [], []
    for name, pattern in _patterns(get_resolver()):
        if name.startswith(WALKED_ELSEWHERE):
            continue
        try:
            url = reverse(name, kwargs=_kwargs(name, pattern, world))
        except Exception:  # noqa: BLE001 - a pattern without a name or with unknown arguments
            pytest.fail(f"the walk cannot build a URL for {name}: give _kwargs its arguments")
        query = QUERIES.get(name, lambda w: {})(world)
        since = _last_id()
        response = client.get(url, query)
        if name == "logout" or response.status_code != 200:
            # 405: POST only (a change, audited by its service); 302: a redirect without a page;
            # 401: the token API, walked with its token in test_report_api_get_writes_a_read_record...
            assert response.status_code in (302, 401, 405), f"{name}: {response.status_code}"
            continue
        visited.append(name)
        if name in NO_PATIENT_DATA:
            if _shows_patient(response.content):
                unexpected.append(name)
            continue
        if not _new_records_naming(since).exists() and not _new_records_naming(since, RETIRED_MRN).exists():
            missing.append(f"{name} ({response.status_code})")
    assert not unexpected, f"views listed as showing no patient data show it: {unexpected}"
    assert not missing, f"views that wrote no audit record naming the patient: {missing}"
    assert {"worklist:list", "worklist:study", "imaging:reconciliation", "imaging:reconcile_study",
            "imaging:transfers", "interfaces:outbound", "interfaces:outbound_detail", "interfaces:charges",
            "monitoring:journey",
            "monitoring:replays", "worklist:api_report"} - set(visited) == {"worklist:api_report"}


PATIENT_ADMINS = {"ris.patient", "ris.order", "ris.requestedprocedure", "ris.scheduledprocedurestep",
                  "ris.statuschange", "ris.patientmerge", "pacs.study", "pacs.instance", "pacs.performedprocedurestep",
                  "pacs.studylink", "pacs.transfer", "hl7gateway.inboundmessage", "hl7gateway.outboundmessage",
                  "worklist.readingclaim"}


def test_every_admin_page_that_shows_patient_data_writes_a_record_naming_the_patient(client, world):
    client.force_login(world["admin"])
    missing = []
    for model in admin.site._registry:
        label = model._meta.label_lower
        info = model._meta.app_label, model._meta.model_name
        obj = model._default_manager.order_by("-pk").first()
        urls = [reverse("admin:{}_{}_changelist".format(*info))]
        if obj is not None:
            urls.append(reverse("admin:{}_{}_change".format(*info), args=[obj.pk]))
        for url in urls:
            since = _last_id()
            response = client.get(url)
            assert response.status_code == 200, url
            if label not in PATIENT_ADMINS and not _shows_patient(response.content):
                continue
            if not (_new_records_naming(since).exists() or _new_records_naming(since, RETIRED_MRN).exists()):
                missing.append(url)
    assert not missing, f"admin pages that show patient data without an audit record: {missing}"
    # The models that hold patient data record every look, whether the page shows the ID or not.
    for label in PATIENT_ADMINS:
        assert isinstance(admin.site._registry[apps.get_model(label)], AuditedAdmin), label


def test_admin_delete_is_recorded(client, world):
    client.force_login(world["admin"])
    link = StudyLink.objects.get()
    since = _last_id()
    response = client.post(reverse("admin:pacs_studylink_delete", args=[link.pk]), {"post": "yes"})
    assert response.status_code == 302
    deleted = _new_records_naming(since).get(action=events.DELETE)
    assert deleted.detail["model"] == "pacs.studylink"
    assert AuditPatient.objects.filter(record=deleted, patient_id=MRN).exists()


def test_claim_release_and_signature_are_recorded(world):
    rp, reader = world["rp"], world["reader"]
    since = _last_id()
    assert worklist_services.release_claim(rp.pk, reader)
    released = _new_records_naming(since).get()
    assert released.detail == {"claim": "released", "reason": "RELEASED"} and released.actor == "walkreader"
    since = _last_id()
    worklist_services.claim_study(rp.pk, reader)
    oh.sign_report(rp, reader, "FINAL")
    found = {(r.event_id, r.action, r.detail.get("signed") or r.detail.get("claim"))
             for r in _new_records_naming(since)}
    assert {(events.PROCEDURE_RECORD.value, events.UPDATE, "claimed"),
            (events.PROCEDURE_RECORD.value, events.UPDATE, "FINAL")} <= found


def test_new_order_for_a_study_and_a_link_are_recorded_as_the_user(client, world):
    client.force_login(world["admin"])
    since = _last_id()
    response = client.post(reverse("imaging:new_order", args=[world["unmatched"].pk]),
                           {"patient": world["patient"].pk, "description": "CT HEAD"})
    assert response.status_code == 302
    created = _new_records_naming(since).get(event_id=events.ORDER_RECORD.value, action=events.CREATE)
    assert (created.actor, created.actor_kind, created.source_address) == ("walkadmin", events.USER, "127.0.0.1")
    assert {"type": "study", "id": world["unmatched"].study_instance_uid} in created.objects
