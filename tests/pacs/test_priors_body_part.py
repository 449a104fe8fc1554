"""Relevant priors by body part (``PRIORS_MATCH`` body_part, modality_or_body_part,
modality_and_body_part; ``pacs.services.prior_relevance``): the order's body part from
PRIORS_BODY_PARTS or its description, a prior's from BodyPartExamined (0018,0015) of its series,
in the engine's index (received by C-STORE) and in a real Orthanc VNA (SERIES-level C-FIND),
else from its StudyDescription."""

from __future__ import annotations

import datetime as dt

import pytest
from pydicom.uid import generate_uid

from pacs.models import Prior, Series, VnaDestination
from pacs.models import priors as pr
from pacs.models import transfers as tr
from pacs.services import prior_relevance as rel
from pacs.services import priors
from tests.factories import make_patient, make_step
from tests.support.orthanc import storescu, write_study
from tests.support.priors import years_ago

TODAY = dt.date(2026, 12, 4)


# ------------------------------------------------------------------------------------------ pure
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CT THORAX W/O CONTRAST", {"CHEST"}),
        ("MR Brain and cervical spine", {"BRAIN", "CSPINE", "SPINE"}),
        ("CT ABDOMEN+PELVIS", {"ABDOMEN", "PELVIS"}),
        ("XR 2 views", set()),
        ("", set()),
    ],
)
def test_defined_terms_named_in_a_description(text, expected):
    assert rel.text_body_parts(text) == expected


@pytest.mark.parametrize(
    ("ordered", "prior", "match"),
    [
        ({"CHEST"}, {"CHEST"}, True),
        ({"BRAIN"}, {"HEAD"}, True),  # the head takes in the brain
        ({"CHEST"}, {"CHESTABDOMEN"}, True),
        ({"CHESTABDOMEN"}, {"ABDOMENPELVIS"}, True),  # the abdomen in both
        ({"LSPINE"}, {"SPINE"}, True),
        ({"LSPINE"}, {"CSPINE"}, False),
        ({"CHEST"}, {"HEAD"}, False),
        ({"KNEE"}, {"WHOLEBODY"}, True),
        ({"CHEST"}, set(), False),  # a prior of unknown body part does not match by body part
    ],
)
def test_body_parts_match_when_a_region_lies_within_the_other(ordered, prior, match):
    assert rel.body_parts_match(frozenset(ordered), frozenset(prior)) is match
    assert rel.body_parts_match(frozenset(prior), frozenset(ordered)) is match


# ------------------------------------------------------------------------------ choose (database)
def _candidate(date, modalities, parts=(), description=""):
    return {
        "study_date": date,
        "modalities_in_study": modalities,
        "study_description": description,
        "accession_number": "",
        "patient_id": "P",
        "issuer_of_patient_id": "HOSP",
        "source": None,
        "body_parts": frozenset(parts),
    }


CANDIDATES = {
    "1.1": _candidate(dt.date(2026, 6, 1), "CT", ["CHEST"]),
    "1.2": _candidate(dt.date(2026, 5, 1), "MR", ["CHEST"]),
    "1.3": _candidate(dt.date(2026, 4, 1), "CT", ["HEAD"]),
    "1.4": _candidate(dt.date(2026, 3, 1), "CR", [], description="XR THORAX 2 VIEWS"),  # by its description
    "1.5": _candidate(dt.date(2026, 2, 1), "US", []),  # body part unknown
}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("modality", ["1.1", "1.3"]),
        ("body_part", ["1.1", "1.2", "1.4"]),
        ("modality_or_body_part", ["1.1", "1.2", "1.3", "1.4"]),
        ("modality_and_body_part", ["1.1"]),
        ("any", ["1.1", "1.2", "1.3", "1.4", "1.5"]),
    ],
)
def test_each_mode_with_the_body_part_mapped_from_the_procedure_code(settings, mode, expected):
    settings.PRIORS_MATCH, settings.PRIORS_MAX_YEARS, settings.PRIORS_MAX_COUNT = mode, 5, 10
    settings.PRIORS_BODY_PARTS = {"71250": ("CHEST",)}
    rp = make_step(
        modality="CT", rp_fields={"procedure_code_value": "71250", "procedure_code_meaning": "CT HEAD (the map wins)"}
    ).requested_procedure
    assert rel.order_body_parts(rp) == {"CHEST"}
    assert [uid for uid, _ in priors.choose(rp, CANDIDATES, today=TODAY)] == expected


@pytest.mark.django_db
def test_an_unmapped_code_takes_the_body_part_its_description_names(settings):
    settings.PRIORS_MATCH, settings.PRIORS_MAX_COUNT, settings.PRIORS_BODY_PARTS = "body_part", 10, {}
    rp = make_step(modality="CT").requested_procedure  # "CT HEAD", code CTHD
    assert rel.order_body_parts(rp) == {"HEAD"}
    assert [uid for uid, _ in priors.choose(rp, CANDIDATES, today=TODAY)] == ["1.3"]


@pytest.mark.django_db
def test_an_order_of_unknown_body_part_is_matched_by_modality(settings):
    settings.PRIORS_MATCH, settings.PRIORS_MAX_COUNT, settings.PRIORS_BODY_PARTS = "body_part", 10, {}
    rp = make_step(
        modality="CT",
        rp_fields={"procedure_code_meaning": "CT 2 phases", "requested_procedure_description": "CT 2 phases"},
        scheduled_procedure_step_description="",
        protocol_code_meaning="",
    ).requested_procedure
    assert rel.order_body_parts(rp) == frozenset()
    assert [uid for uid, _ in priors.choose(rp, CANDIDATES, today=TODAY)] == ["1.1", "1.3"]


@pytest.mark.socket
def test_the_body_part_map_from_the_environment_and_a_bad_entry_named_by_the_checks(tmp_path):
    """PRIORS_BODY_PARTS "CODE=PART[+PART],...": good entries kept, a bad one named (pacs.E001)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update(
        VAR_DIR=str(tmp_path / "var"),
        PRIORS_MATCH="modality_or_body_part",
        PRIORS_BODY_PARTS="71250=CHEST, 74177 = abdomen+PELVIS ,NOEQUALS,X=NOT-A-TERM",
    )
    root = Path(__file__).resolve().parents[2]

    def manage(*args):
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=root, env=env, capture_output=True, text=True, timeout=120
        )

    shown = manage("shell", "-c", "from django.conf import settings as s; print(s.PRIORS_MATCH, s.PRIORS_BODY_PARTS)")
    assert (
        shown.stdout.strip().splitlines()[-1]
        == "modality_or_body_part {'71250': ('CHEST',), '74177': ('ABDOMEN', 'PELVIS')}"
    ), shown.stderr
    checked = manage("check")
    out = checked.stdout + checked.stderr
    assert checked.returncode != 0
    assert "PRIORS_BODY_PARTS='NOEQUALS'" in out and "PRIORS_BODY_PARTS='X=NOT-A-TERM'" in out
    assert "71250" not in out


# --------------------------------------------------------- the index and a real Orthanc as the VNA


def _study(tmp_path, *, modality, years, body_part="", description="", n=1) -> tuple[str, list]:
    uid = generate_uid()
    paths = write_study(
        tmp_path / uid,
        n,
        study_instance_uid=uid,
        modality=modality,
        patient_id="BP1",
        patient_name="DOE^BODY",
        accession_number=f"B{uid[-8:]}",
        study_date=years_ago(years),
        body_part_examined=body_part,
        study_description=description,
    )
    return uid, paths


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(180)
def test_priors_by_body_part_from_the_index_and_from_the_vna(engine, orthanc, routing_settings, broker, tmp_path):
    """The order: CT, procedure code 71250 mapped to CHEST.  In Orthanc: a CT chest, an MR chest,
    a CT head, a chest X-ray whose series give no body part but whose StudyDescription names the
    thorax; in the engine (received by C-STORE): an older MR chest.  ``body_part`` takes the
    chests of every modality; ``modality_and_body_part`` the CT chest alone."""
    from tests.support.dicom import port

    routing_settings.PRIORS_BODY_PARTS = {"71250": ("CHEST",)}
    routing_settings.PRIORS_MAX_COUNT, routing_settings.PRIORS_MAX_YEARS = 10, 5
    VnaDestination.objects.create(
        name="orthanc", kind=tr.KIND_DICOM, ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port
    )
    in_vna = {}
    for name, kwargs in {
        "ct_chest": dict(modality="CT", years=1, body_part="CHEST", n=2),
        "mr_chest": dict(modality="MR", years=1.5, body_part="CHEST"),
        "ct_head": dict(modality="CT", years=2, body_part="HEAD"),
        "cr_thorax": dict(modality="CR", years=2.5, description="XR THORAX PA+LAT"),
    }.items():
        uid, paths = _study(tmp_path, **kwargs)
        assert storescu(orthanc.dicom_port, paths, called=orthanc.aet).returncode == 0
        in_vna[name] = uid
    local_uid, paths = _study(tmp_path, modality="MR", years=3, body_part="CHEST")
    assert storescu(port(engine), paths).returncode == 0
    assert list(
        Series.objects.filter(study__study_instance_uid=local_uid).values_list("body_part_examined", flat=True)
    ) == ["CHEST"]

    patient = make_patient("DOE^BODY", "BP1")
    routing_settings.PRIORS_ENABLED = False  # the searches below are run here, not by a worker
    by_part = make_step(patient, modality="CT", rp_fields={"procedure_code_value": "71250"}).requested_procedure
    both = make_step(patient, modality="CT", rp_fields={"procedure_code_value": "71250"}).requested_procedure

    routing_settings.PRIORS_MATCH = "body_part"
    priors.find_priors(by_part.pk)
    chosen = list(Prior.objects.filter(requested_procedure=by_part).values_list("study_instance_uid", "status"))
    assert chosen == [
        (in_vna["ct_chest"], pr.SCHEDULED),
        (in_vna["mr_chest"], pr.SCHEDULED),
        (in_vna["cr_thorax"], pr.SCHEDULED),
        (local_uid, pr.READY),
    ]

    routing_settings.PRIORS_MATCH = "modality_and_body_part"
    priors.find_priors(both.pk)
    assert list(Prior.objects.filter(requested_procedure=both).values_list("study_instance_uid", flat=True)) == [
        in_vna["ct_chest"]
    ]
