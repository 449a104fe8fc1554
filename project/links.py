"""Links to a study's images, from settings: the image viewer (``VIEWER_URL_TEMPLATE``) and the
DICOMweb WADO-RS study resource (``WADO_RS_BASE_URL``, DICOM PS3.18 10.4.1: ``{base}/studies/
{StudyInstanceUID}``).  The reading worklist shows them; an ORU^R01 may carry them as OBX of
value type RP (HL7 v2.5.1 2A.65 reference pointer).  Plain functions on strings, so that every
layer builds the same link, and the system check ``pacs.E009`` refuses a template they cannot
fill rather than leaving every link silently empty.
"""

from __future__ import annotations

import string
import time
from urllib.parse import quote, urlsplit

from django.core import signing

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


# --- Signed study links (DICOMweb for one study) ----------------------------------------------
#: Salt of the study link signature: a link signed for anything else never verifies as one.
STUDY_LINK_SALT = "dicomweb.study-link"
#: The query parameter that carries the signature (as RFC 6750 2.3 carries a bearer token).
STUDY_LINK_PARAMETER = "access_token"


class StudyLinkInvalid(Exception):
    """A study link signature that is malformed, forged or expired."""


def sign_study_link(study_instance_uid: str) -> str:
    """A signature that grants DICOMweb on one study (``django.core.signing``, timestamped,
    keyed by SECRET_KEY); how long it is good for is decided when it is checked."""
    return signing.dumps({"study": study_instance_uid, "at": int(time.time())}, salt=STUDY_LINK_SALT, compress=True)


def study_of_link(token: str, *, max_age_seconds: float) -> tuple[str, float]:
    """The Study Instance UID a link signature grants and the time it was signed (POSIX
    seconds); ``StudyLinkInvalid`` when it is malformed, forged or older than ``max_age_seconds``."""
    try:
        value = signing.loads(token, salt=STUDY_LINK_SALT, max_age=max_age_seconds)
    except signing.SignatureExpired:
        raise StudyLinkInvalid("the study link has expired") from None
    except signing.BadSignature:
        raise StudyLinkInvalid("the study link is not valid") from None
    study = value.get("study") if isinstance(value, dict) else None
    if not isinstance(study, str) or not study:
        raise StudyLinkInvalid("the study link names no study")
    signed_at = value.get("at")
    return study, float(signed_at) if isinstance(signed_at, (int, float)) else 0.0


def signed_study_link(base: str, study_instance_uid: str) -> str:
    """A WADO-RS study link that carries its own grant: ``{base}/studies/{uid}?access_token=...``
    ("" without a usable base URL)."""
    url = wado_rs_study_url(base, study_instance_uid)
    if not url:
        return ""
    return f"{url}?{STUDY_LINK_PARAMETER}={quote(sign_study_link(study_instance_uid), safe='')}"
