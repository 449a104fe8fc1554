"""Which earlier studies are relevant priors (``pacs.services.priors``): the identifiers a merged
patient has had, and the administrator's rules (PRIORS_MATCH, PRIORS_MAX_YEARS, PRIORS_MAX_COUNT)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import transaction

from pacs.services import priors
from ris.commands import MergePatients, PatientData, PatientIdentity
from ris.services.patients import merge_patients
from tests.factories import make_patient, make_step

pytestmark = pytest.mark.django_db

TODAY = dt.date(2026, 12, 4)


def _candidate(date, modalities):
    return {"study_date": date, "modalities_in_study": modalities, "study_description": "", "accession_number": "",
            "patient_id": "P", "issuer_of_patient_id": "HOSP", "source": None}


def test_identities_include_the_ones_retired_by_a_merge():
    survivor = make_patient("DOE^JOHN", "S1")
    make_patient("DOE^JON", "R1", issuer="OTHER")
    with transaction.atomic():
        merge_patients(MergePatients(survivor=PatientData(identifiers=[PatientIdentity("S1", "HOSP")]),
                                     retired=PatientIdentity("R1", "OTHER"), cause="A40 test"))
    assert priors.identities(survivor.pk) == [("R1", "OTHER"), ("S1", "HOSP")]


def test_same_modality_within_the_years_newest_first_at_most_n(settings):
    settings.PRIORS_MATCH, settings.PRIORS_MAX_YEARS, settings.PRIORS_MAX_COUNT = "modality", 5, 2
    rp = make_step(modality="CT").requested_procedure
    candidates = {
        "1.1": _candidate(dt.date(2025, 6, 1), "CT"),
        "1.2": _candidate(dt.date(2024, 6, 1), "CT\\SR"),
        "1.3": _candidate(dt.date(2023, 6, 1), "CT"),  # third: beyond the count
        "1.4": _candidate(dt.date(2026, 1, 1), "MR"),  # other modality
        "1.5": _candidate(dt.date(2020, 12, 3), "CT"),  # older than 5 years
        "1.6": _candidate(None, "CT"),  # no StudyDate
    }
    assert [uid for uid, _ in priors.choose(rp, candidates, today=TODAY)] == ["1.1", "1.2"]
    settings.PRIORS_MATCH, settings.PRIORS_MAX_COUNT = "any", 10
    assert [uid for uid, _ in priors.choose(rp, candidates, today=TODAY)] == ["1.4", "1.1", "1.2", "1.3"]
