"""Which earlier studies are relevant to an order: by modality, by body part, or both
(``PRIORS_MATCH``).  Pure functions over plain values, except ``order_body_parts`` and
``local_body_parts``, which read the order and the index.

Body parts are BodyPartExamined (0018,0015) defined terms (PS3.3 C.7.3.1; the terms and the
anatomic regions of PS3.16 CID 4031 "Common Anatomic Regions" they stand for are listed in
PS3.16 Annex L), e.g. ``CHEST``, ``HEAD``, ``LSPINE``.

- The order's body parts: ``PRIORS_BODY_PARTS`` maps the requested procedure's code (OBR-4.1,
  ``procedure_code_value``) to them; a code not in the map falls back to the defined terms named
  in the procedure's text (OBR-4.2, the requested procedure and step descriptions).
- A prior's body parts: BodyPartExamined of its series (the index's series rows; for a study only
  the VNA holds, a C-FIND at the SERIES level, PS3.4 C.6.2.1); a study whose series carry none falls
  back to the defined terms named in its StudyDescription (0008,1030).
- Two sets match when a region of one is, or lies within, a region of the other (``COVERS``:
  ``HEAD`` covers ``BRAIN``, ``CHESTABDOMEN`` covers ``CHEST`` and ``ABDOMEN``, ``SPINE`` its
  segments; ``CSPINE`` and ``LSPINE`` do not match).
"""

from __future__ import annotations

import re

from django.conf import settings

MODES = ("modality", "body_part", "modality_or_body_part", "modality_and_body_part", "any")

_SPINE = frozenset({"CSPINE", "TSPINE", "LSPINE", "SSPINE", "COCCYX"})
_HEAD = frozenset(
    {
        "BRAIN",
        "SKULL",
        "ORBIT",
        "IAC",
        "FACE",
        "JAW",
        "MAXILLA",
        "NOSE",
        "EAR",
        "EYE",
        "TMJ",
        "CEREBELLUM",
        "CIRCLEOFWILLIS",
        "SCALP",
        "MOUTH",
        "ZYGOMA",
    }
)
_NECK = frozenset({"LARYNX", "PHARYNX", "THYROID", "CAROTID", "PAROTID", "SUBMANDIBULAR", "TRACHEA"})
_CHEST = frozenset(
    {"LUNG", "HEART", "MEDIASTINUM", "RIB", "STERNUM", "CORONARYARTERY", "ESOPHAGUS", "THYMUS", "BRONCHUS"}
)
_ABDOMEN = frozenset(
    {
        "LIVER",
        "PANCREAS",
        "SPLEEN",
        "KIDNEY",
        "ADRENAL",
        "GALLBLADDER",
        "STOMACH",
        "DUODENUM",
        "JEJUNUM",
        "ILEUM",
        "COLON",
    }
)
_PELVIS = frozenset({"BLADDER", "PROSTATE", "UTERUS", "OVARY", "RECTUM", "HIP", "SACRUM", "COCCYX"})

#: A defined term and the regions it takes in (PS3.16 Annex L's combined regions such as
#: CHESTABDOMEN, and the parts of a region named by their own terms).
COVERS: dict[str, frozenset[str]] = {
    "HEAD": _HEAD,
    "NECK": _NECK,
    "CHEST": _CHEST,
    "ABDOMEN": _ABDOMEN,
    "PELVIS": _PELVIS,
    "SPINE": _SPINE | {"TLSPINE", "LSSPINE"},
    "TLSPINE": frozenset({"TSPINE", "LSPINE"}),
    "LSSPINE": frozenset({"LSPINE", "SSPINE"}),
    "HEADNECK": {"HEAD", "NECK"} | _HEAD | _NECK,
    "NECKCHEST": {"NECK", "CHEST"} | _NECK | _CHEST,
    "CHESTABDOMEN": {"CHEST", "ABDOMEN"} | _CHEST | _ABDOMEN,
    "ABDOMENPELVIS": {"ABDOMEN", "PELVIS"} | _ABDOMEN | _PELVIS,
    "CHESTABDPELVIS": {"CHEST", "ABDOMEN", "PELVIS"} | _CHEST | _ABDOMEN | _PELVIS,
    "NECKCHESTABDOMEN": {"NECK", "CHEST", "ABDOMEN"} | _NECK | _CHEST | _ABDOMEN,
    "NECKCHESTABDPELV": {"NECK", "CHEST", "ABDOMEN", "PELVIS"} | _NECK | _CHEST | _ABDOMEN | _PELVIS,
}
#: Covers every region.
WHOLEBODY = "WHOLEBODY"

#: The defined terms recognised in free text (a procedure's or a study's description), and a few
#: words that stand for one.
_TERMS = (
    set(COVERS)
    | _SPINE
    | _HEAD
    | _NECK
    | _CHEST
    | _ABDOMEN
    | _PELVIS
    | {
        "WHOLEBODY",
        "BREAST",
        "SHOULDER",
        "ELBOW",
        "WRIST",
        "HAND",
        "FINGER",
        "THUMB",
        "KNEE",
        "ANKLE",
        "FOOT",
        "TOE",
        "FEMUR",
        "TIBIA",
        "HUMERUS",
        "CLAVICLE",
        "SCAPULA",
        "PATELLA",
        "CALCANEUS",
        "EXTREMITY",
        "ARM",
        "LEG",
        "THIGH",
        "AORTA",
        "TESTIS",
        "SCROTUM",
    }
)
_WORDS = {
    "THORAX": "CHEST",
    "THORACIC": "CHEST",
    "ABDOMINAL": "ABDOMEN",
    "CRANIAL": "HEAD",
    "CRANIUM": "HEAD",
    "CERVICAL": "CSPINE",
    "LUMBAR": "LSPINE",
    "MAMMOGRAPHY": "BREAST",
    "MAMMO": "BREAST",
    "CARDIAC": "HEART",
    "RENAL": "KIDNEY",
    "HEPATIC": "LIVER",
    "PULMONARY": "LUNG",
    "SINUS": "HEAD",
    "SINUSES": "HEAD",
}


def needs_body_part(mode: str | None = None) -> bool:
    return (mode or settings.PRIORS_MATCH) in ("body_part", "modality_or_body_part", "modality_and_body_part")


def normalise(values) -> frozenset[str]:
    """BodyPartExamined values as defined terms: upper case, blanks left out (CS, PS3.5 6.2)."""
    return frozenset(v.strip().upper() for v in values if v and v.strip())


def text_body_parts(*texts: str) -> frozenset[str]:
    """The defined terms a free text names as words ("CT THORAX W/O" -> CHEST)."""
    found = set()
    for text in texts:
        for word in re.findall(r"[A-Za-z]+", text or ""):
            word = word.upper()
            if word in _WORDS:
                found.add(_WORDS[word])
            elif word in _TERMS:
                found.add(word)
    return frozenset(found)


def _regions(term: str) -> frozenset[str]:
    return frozenset({term}) | COVERS.get(term, frozenset())


def body_parts_match(ordered: frozenset[str], prior: frozenset[str]) -> bool:
    """A region of one is, or lies within, a region of the other (or either is WHOLEBODY)."""
    if not ordered or not prior:
        return False
    if WHOLEBODY in ordered or WHOLEBODY in prior:
        return True
    return any(_regions(a) & _regions(b) for a in ordered for b in prior)


def modality_matches(ordered: set[str], modalities_in_study: str) -> bool:
    return bool(ordered & set(filter(None, (modalities_in_study or "").split("\\"))))


def relevant(
    mode: str,
    *,
    ordered_modalities: set[str],
    ordered_body_parts: frozenset[str],
    modalities_in_study: str,
    body_parts: frozenset[str],
) -> bool:
    """``PRIORS_MATCH`` applied to one candidate.  An order whose body part is not known is
    matched by modality alone under the body-part modes."""
    if mode == "any":
        return True
    same_modality = modality_matches(ordered_modalities, modalities_in_study)
    if mode == "modality" or not ordered_body_parts:
        return same_modality
    same_part = body_parts_match(ordered_body_parts, body_parts)
    if mode == "body_part":
        return same_part
    if mode == "modality_or_body_part":
        return same_modality or same_part
    return same_modality and same_part


def order_body_parts(rp) -> frozenset[str]:
    """The requested procedure's body parts: ``PRIORS_BODY_PARTS`` by its code (OBR-4.1), else
    the defined terms its texts name (OBR-4.2, the step descriptions and protocol meanings)."""
    mapped = (
        settings.PRIORS_BODY_PARTS.get(rp.procedure_code_value.strip().upper()) if rp.procedure_code_value else None
    )
    if mapped:
        return normalise(mapped)
    texts = [rp.procedure_code_meaning, rp.requested_procedure_description]
    for step in rp.steps.all():
        texts += [step.scheduled_procedure_step_description, step.protocol_code_meaning]
    return text_body_parts(*texts)


def local_body_parts(study_instance_uids) -> dict[str, frozenset[str]]:
    """BodyPartExamined of the index's series, per study."""
    from pacs.models import Series

    out: dict[str, set[str]] = {}
    rows = (
        Series.objects.filter(study__study_instance_uid__in=list(study_instance_uids))
        .exclude(body_part_examined="")
        .values_list("study__study_instance_uid", "body_part_examined")
    )
    for uid, part in rows:
        out.setdefault(uid, set()).add(part)
    return {uid: normalise(parts) for uid, parts in out.items()}


def with_description(parts: frozenset[str], study_description: str) -> frozenset[str]:
    """The series' BodyPartExamined, else the terms named in StudyDescription."""
    return parts or text_body_parts(study_description)
