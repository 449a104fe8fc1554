"""The signed report as a PDF, for the ORU^R01 of a destination that asks for it (``pdf=1``):
carried base64-encoded in an OBX of value type ED (HL7 v2.5.1 2A.24; ``hl7gateway.oru``).

Built by ReportLab (platypus: paragraphs wrap, long reports break into pages) from the same plain
values as the message (``oru.OruContent``): the patient (name, identifiers, birth date, sex), the
accession number, the procedure, the report's text lines, the result status, the signer and the
time of the signature.  Reproducible: ReportLab's invariant mode leaves out the creation date and
the random document ID, so the same content gives the same bytes (the outbox stores the message
once anyway; a resend is those bytes).  The standard Helvetica font is not embedded and covers
Latin-1 (WinAnsi); a character outside it is drawn as the font's missing glyph, while the OBX
text lines carry the text exactly.

ReportLab is imported here and this module only when a PDF is built: queueing an ORU^R01 for
destinations without ``pdf=1`` never loads it.
"""

from __future__ import annotations

import io
import zoneinfo
from xml.sax.saxutils import escape as xml_escape

from hl7gateway.oru import OruContent, Person

#: OBR-25 / OBX-11 (HL7 table 0123) as the PDF says it.
STATUS_TEXT = {"P": "Preliminary", "F": "Final", "C": "Corrected (addendum)", "X": "Cancelled"}


def _name(person: Person) -> str:
    """Family, given middle -- as a reader expects it on a report."""
    given = " ".join(p for p in (person.prefix, person.given, person.middle) if p)
    family = " ".join(p for p in (person.family, person.suffix) if p)
    return ", ".join(p for p in (family, given) if p)


def render_pdf(content: OruContent, *, time_zone: str = "UTC", institution: str = "") -> bytes:
    """The report as PDF bytes (see the module docstring); ``institution`` heads the page."""
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    tz = zoneinfo.ZoneInfo(time_zone)
    styles = getSampleStyleSheet()
    body, heading, section, small = styles["BodyText"], styles["Heading2"], styles["Heading4"], styles["Normal"]

    def p(text: str, style=body) -> Paragraph:
        return Paragraph(xml_escape(text), style)

    def when(value) -> str:
        return value.astimezone(tz).strftime("%Y-%m-%d %H:%M") if value else ""

    ids = ", ".join(
        i.id_number + (f" ({i.assigning_authority})" if i.assigning_authority else "")
        for i in content.patient_identifiers if i.id_number
    )
    procedure = content.procedure_code_meaning or content.procedure_code_value
    if content.procedure_code_value and content.procedure_code_meaning:
        procedure = f"{content.procedure_code_meaning} ({content.procedure_code_value})"
    facts = [
        ("Patient", _name(content.patient_name)),
        ("Patient ID", ids),
        ("Birth date / sex", " / ".join(v for v in (
            content.patient_birth_date.isoformat() if content.patient_birth_date else "", content.patient_sex) if v)),
        ("Accession number", content.accession_number),
        ("Procedure", procedure),
        ("Exam date", when(content.observation_datetime)),
        ("Referring physician", _name(content.referring_physician)),
        ("Status", STATUS_TEXT.get(content.result_status, content.result_status)),
    ]
    table = Table([[p(k, small), p(v, small)] for k, v in facts if v], colWidths=[40 * mm, None])
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"),
                               ("LINEBELOW", (0, -1), (-1, -1), 0.5, "#888888")]))
    story = [p(f"{institution} - Radiology report" if institution else "Radiology report", heading), table,
             Spacer(1, 4 * mm)]
    for line in content.text_lines:
        story.append(p(line, section if line.isupper() and line.endswith(":") else body) if line
                     else Spacer(1, 2 * mm))
    signer = _name(content.signer)
    story += [Spacer(1, 6 * mm),
              p(f"Electronically signed by {signer or 'the reading radiologist'}"
                + (f" on {when(content.signed_at)} ({time_zone})" if content.signed_at else ""), small)]
    out = io.BytesIO()
    doc = SimpleDocTemplate(out, pagesize=A4, invariant=1, title=f"Radiology report {content.accession_number}",
                            author=signer, subject=procedure, creator="", producer="",
                            leftMargin=20 * mm, rightMargin=20 * mm, topMargin=18 * mm, bottomMargin=18 * mm)
    doc.build(story)
    return out.getvalue()
