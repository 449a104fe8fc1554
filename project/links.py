"""Links to a study's images, from settings: the image viewer (``VIEWER_URL_TEMPLATE``) and the
DICOMweb WADO-RS study resource (``WADO_RS_BASE_URL``, DICOM PS3.18 10.4.1: ``{base}/studies/
{StudyInstanceUID}``).  The reading worklist shows them; an ORU^R01 may carry them as OBX of
value type RP (HL7 v2.5.1 2A.65 reference pointer).  Plain functions on strings, so that every
layer builds the same link, and the system check ``pacs.E009`` refuses a template they cannot
fill rather than leaving every link silently empty.
"""

from __future__ import annotations

import string
from urllib.parse import quote, urlsplit

#: The placeholders a viewer template may use: DICOM keywords and their snake-case forms.
PLACEHOLDERS = ("StudyInstanceUID", "AccessionNumber", "PatientID",
                "study_instance_uid", "accession_number", "patient_id")


def template_problem(template: str) -> str:
    """Why ``template`` cannot make a viewer link ("" when it can, or when it is empty)."""
    if not template:
        return ""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        return f"cannot be read as a template ({exc})"
    unknown = sorted({f for f in fields if f not in PLACEHOLDERS})
    if unknown:
        return f"has unknown placeholders {', '.join('{' + f + '}' for f in unknown)} (known: " \
               f"{', '.join('{' + p + '}' for p in PLACEHOLDERS[:3])})"
    return ""


def base_url_problem(base: str) -> str:
    """Why ``base`` cannot be the WADO-RS base URL ("" when it can, or when it is empty)."""
    if not base:
        return ""
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        return "must be an http:// or https:// URL without query or fragment (e.g. https://pacs.example/dicom-web)"
    return ""


def viewer_url(template: str, *, study_instance_uid: str, accession_number: str = "", patient_id: str = "") -> str:
    """The viewer link of a study: the template filled with URL-quoted values ("" without a
    template, or with one ``template_problem`` refuses: no link rather than a wrong one)."""
    if not template or not study_instance_uid or template_problem(template):
        return ""
    study_uid = quote(study_instance_uid, safe="")
    accession = quote(accession_number or "", safe="")
    patient = quote(patient_id or "", safe="")
    return template.format(study_instance_uid=study_uid, StudyInstanceUID=study_uid, accession_number=accession,
                           AccessionNumber=accession, patient_id=patient, PatientID=patient)


def wado_rs_study_url(base: str, study_instance_uid: str) -> str:
    """The WADO-RS Retrieve Study resource (PS3.18 10.4.1.1.1): ``{base}/studies/{uid}``."""
    if not base or not study_instance_uid or base_url_problem(base):
        return ""
    return f"{base.rstrip('/')}/studies/{quote(study_instance_uid, safe='')}"
