"""The report links to its images: an ORU^R01 carries, for destinations that ask (``links=viewer,
wado`` or the admin), an OBX of value type RP (HL7 v2.5.1 2A.65 reference pointer) with the
study's viewer URL (VIEWER_URL_TEMPLATE) and one with its WADO-RS URL (WADO_RS_BASE_URL, PS3.18
10.4.1); none by default; a link setting that cannot make a link stops the start (pacs.E009)."""

from __future__ import annotations

import datetime as dt
from urllib.parse import unquote

import hl7
import pytest

from hl7gateway import oru
from hl7gateway.models import OutboundMessage
from project import checks, links
from tests.factories import oru as h

VIEWER = "https://viewer.example/ohif/viewer?StudyInstanceUIDs={StudyInstanceUID}&acc={AccessionNumber}"
WADO = "https://pacs.example/dicom-web/"


def render(**header) -> hl7.Message:
    content = oru.OruContent(
        patient_identifiers=(oru.PatientIdentifier("MRN1", "HOSP", "MR"),), patient_name=oru.Person("TEST", "ANNA"),
        patient_birth_date=None, patient_sex="F", accession_number="ACC1", text_lines=("Normal.",),
        study_instance_uid="2.25.77", viewer_url="https://v.example/s?uid=2.25.77&acc=ACC1",
        wado_rs_url="https://pacs.example/dicom-web/studies/2.25.77",
    )
    head = oru.MessageHeader(message_control_id="ORU000000000001", created_at=dt.datetime(2026, 3, 2, tzinfo=dt.UTC),
                             sending_application="PACS", **header)
    return hl7.parse(oru.render_oru(content, head))


def rp_obx(msg: hl7.Message) -> list:
    return [s for s in msg.segments("OBX") if str(s[2]) == "RP"]


def test_no_reference_pointer_unless_the_destination_asks():
    msg = render()
    assert rp_obx(msg) == [] and [str(s[2]) for s in msg.segments("OBX")] == ["TX", "ST"]


def test_viewer_and_wado_rs_pointers_follow_the_study_uid_obx():
    msg = render(link_viewer=True, link_wado_rs=True)
    viewer, wado = rp_obx(msg)
    assert [str(s[1]) for s in msg.segments("OBX")] == ["1", "2", "3", "4"]  # OBX-1 continues
    assert str(viewer[3]) == "VIEWER^Study in the image viewer^99PACS"
    # RP: pointer ^ application ID ^ type of data ^ subtype; the URL's & escaped as \T\ (2.7.4).
    assert str(viewer[5]) == r"https://v.example/s?uid=2.25.77\T\acc=ACC1^PACS^TEXT^HTML"
    assert oru.unescape(str(viewer[5][0][0])) == "https://v.example/s?uid=2.25.77&acc=ACC1"
    assert str(wado[3]) == "WADORS^Study by DICOMweb WADO-RS^99PACS"
    assert str(wado[5]) == "https://pacs.example/dicom-web/studies/2.25.77^PACS^IM^DICOM"
    assert str(viewer[11]) == str(wado[11]) == "F"  # OBX-11 = the result status


def test_each_pointer_on_its_own():
    assert [str(s[3][0][0]) for s in rp_obx(render(link_wado_rs=True))] == ["WADORS"]
    assert [str(s[3][0][0]) for s in rp_obx(render(link_viewer=True))] == ["VIEWER"]


@pytest.mark.django_db
def test_signed_report_carries_the_links_its_destination_asks_for(settings):
    settings.VIEWER_URL_TEMPLATE = VIEWER
    settings.WADO_RS_BASE_URL = WADO
    h.destination("billing", 2576)  # as every destination was before: no links
    h.destination("ehr", 2577, link_viewer=True, link_wado_rs=True)
    h.destination("ehr-viewer-only", 2578, hl7_version="2.3.1", link_viewer=True)
    rp = h.study()
    version = h.sign_report(rp, h.radiologist())
    rows = {r.destination.name: hl7.parse(bytes(r.payload).decode())
            for r in OutboundMessage.objects.filter(report_version=version).select_related("destination")}
    assert rp_obx(rows["billing"]) == []
    viewer, wado = rp_obx(rows["ehr"])
    uid = rp.study_instance_uid
    assert oru.unescape(str(viewer[5][0][0])) == (
        f"https://viewer.example/ohif/viewer?StudyInstanceUIDs={uid}&acc={rp.accession_number}")
    assert str(wado[5][0][0]) == f"https://pacs.example/dicom-web/studies/{uid}"
    assert [str(s[3][0][0]) for s in rp_obx(rows["ehr-viewer-only"])] == ["VIEWER"]


@pytest.mark.django_db
def test_a_destination_asking_for_a_link_nobody_configured_gets_none(settings):
    settings.VIEWER_URL_TEMPLATE = ""
    settings.WADO_RS_BASE_URL = ""
    h.destination("ehr", 2577, link_viewer=True, link_wado_rs=True)
    version = h.sign_report(h.study(), h.radiologist())
    assert rp_obx(hl7.parse(bytes(OutboundMessage.objects.get(report_version=version).payload).decode())) == []


# --- the settings ---------------------------------------------------------------------------------
@pytest.mark.parametrize("template,problem", [
    ("https://v.example/{Unknown}", "unknown placeholders {Unknown}"),
    ("https://v.example/{StudyInstanceUID", "cannot be read as a template"),
    ("https://v.example/}{StudyInstanceUID}", "cannot be read as a template"),
    ("https://v.example/{0}", "unknown placeholders {0}"),
])
def test_an_unusable_viewer_template_is_refused_at_start(settings, template, problem):
    settings.VIEWER_URL_TEMPLATE = template
    settings.WADO_RS_BASE_URL = ""
    (error,) = checks.check_study_links(None)
    assert error.id == "pacs.E009" and problem in error.msg and "VIEWER_URL_TEMPLATE" in error.msg
    assert links.viewer_url(template, study_instance_uid="2.25.1") == ""  # and makes no link


@pytest.mark.parametrize("base", ["pacs.example/dicom-web", "ftp://pacs.example/", "https://p.example/dw?x=1"])
def test_an_unusable_wado_rs_base_is_refused_at_start(settings, base):
    settings.VIEWER_URL_TEMPLATE = ""
    settings.WADO_RS_BASE_URL = base
    (error,) = checks.check_study_links(None)
    assert error.id == "pacs.E009" and "WADO_RS_BASE_URL" in error.msg


def test_good_and_empty_link_settings_pass(settings):
    for template, base in ((VIEWER, WADO), ("", "")):
        settings.VIEWER_URL_TEMPLATE, settings.WADO_RS_BASE_URL = template, base
        assert checks.check_study_links(None) == []


@pytest.mark.django_db
def test_signed_wado_rs_link_grants_its_study(settings):
    settings.WADO_RS_BASE_URL = WADO
    settings.DICOMWEB_ORU_SIGNED_LINKS = True
    h.destination("ehr", 2577, link_wado_rs=True)
    rp = h.study()
    version = h.sign_report(rp, h.radiologist())
    [wado] = rp_obx(hl7.parse(bytes(OutboundMessage.objects.get(report_version=version).payload).decode()))
    url = oru.unescape(str(wado[5][0][0]))
    base, _, query = url.partition("?access_token=")
    assert base == f"https://pacs.example/dicom-web/studies/{rp.study_instance_uid}"
    study, _signed_at = links.study_of_link(unquote(query), max_age_seconds=60)
    assert study == rp.study_instance_uid


def test_dicomweb_base_url_that_is_no_url_stops_the_start(settings):
    settings.DICOMWEB_BASE_URL = "pacs.example/dicomweb"
    [error] = checks.check_study_links(None)
    assert error.id == "pacs.E009" and "DICOMWEB_BASE_URL" in error.msg
