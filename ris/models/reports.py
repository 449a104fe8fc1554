"""Reports and their versions (IHE RAD-128 / RAD-28 for the ORU^R01 they become; OBR-25 result status).

One ``Report`` per study (requested procedure = accession).  Its text lives in
``ReportVersion`` rows: at most one unsigned draft at a time (``signed_at`` NULL), which
autosave overwrites; signing freezes the draft as a preliminary, final or addendum version.
A signed version is never changed again: an addendum is a new version that repeats the
findings and impression of the final report and adds ``addendum``, so the original stays as
it was.  ``result_status`` is what OBR-25 / OBX-11 of the ORU^R01 carry (HL7 table 0123:
P preliminary, F final, C correction/addendum).  Status changes of ``Report`` go through
``ris.services.transitions.transition`` (table ``report`` in ``ris.states``); the rules are
in ``ris.services.reports``.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

REPORT_DRAFT = "DRAFT"
REPORT_PRELIMINARY = "PRELIMINARY"
REPORT_FINAL = "FINAL"
REPORT_ADDENDED = "ADDENDED"
REPORT_STATUSES = (REPORT_DRAFT, REPORT_PRELIMINARY, REPORT_FINAL, REPORT_ADDENDED)

KIND_PRELIMINARY = "PRELIMINARY"
KIND_FINAL = "FINAL"
KIND_ADDENDUM = "ADDENDUM"
KINDS = (KIND_PRELIMINARY, KIND_FINAL, KIND_ADDENDUM)
# OBR-25 Result Status (HL7 table 0123) by kind of signature.
RESULT_STATUS = {KIND_PRELIMINARY: "P", KIND_FINAL: "F", KIND_ADDENDUM: "C"}


class Report(models.Model):
    """The report of one study; its status summarizes its signed versions."""

    requested_procedure = models.OneToOneField(
        "ris.RequestedProcedure", on_delete=models.PROTECT, related_name="report"
    )
    status = models.CharField(max_length=12, choices=[(s, s.title()) for s in REPORT_STATUSES], default=REPORT_DRAFT)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["status"])]

    def __str__(self) -> str:
        return f"report {self.pk} {self.status}"

    @property
    def draft(self) -> ReportVersion | None:
        return self.versions.filter(signed_at__isnull=True).first()

    def signed_versions(self):
        return self.versions.filter(signed_at__isnull=False).order_by("version_number")


class ReportVersion(models.Model):
    """One version of a report: the open draft (signed_at NULL) or a signed, frozen version."""

    report = models.ForeignKey(Report, on_delete=models.PROTECT, related_name="versions")
    version_number = models.PositiveIntegerField()
    kind = models.CharField(max_length=12, choices=[(k, k.title()) for k in KINDS], default=KIND_FINAL,
                            help_text="what the draft will be signed as; fixed once signed")
    result_status = models.CharField(max_length=1, blank=True, help_text="OBR-25 / OBX-11: P, F or C")
    findings = models.TextField(blank=True)
    impression = models.TextField(blank=True)
    addendum = models.TextField(blank=True, help_text="text of an addendum; empty for other kinds")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+",
                               help_text="who last edited the text")
    signed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT,
                                  related_name="+")
    signer_name = models.CharField(max_length=320, blank=True, help_text="OBR-32 / XCN: FAMILY^GIVEN")
    signed_at = models.DateTimeField(null=True, blank=True)
    critical_result = models.BooleanField(default=False)
    critical_communicated_to = models.CharField(max_length=200, blank=True)
    critical_communicated_at = models.DateTimeField(null=True, blank=True)
    source = models.CharField(max_length=16, default="browser", help_text="browser or api (dictation system)")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["report", "version_number"], name="uniq_report_version_number"),
            models.UniqueConstraint(fields=["report"], condition=Q(signed_at__isnull=True), name="one_draft_per_report"),
        ]
        # Signed versions of a kind in signing order: the final reports whose ORU^R01 is overdue
        # (monitoring.selectors.undelivered_final_reports) are read oldest first by this index.
        indexes = [models.Index(fields=["kind", "signed_at", "id"], name="reportversion_kind_signed")]
        ordering = ["report", "version_number"]

    def __str__(self) -> str:
        state = self.result_status or "draft"
        return f"report {self.report_id} v{self.version_number} {self.kind} {state}"

    @property
    def is_signed(self) -> bool:
        return self.signed_at is not None


class ReportTemplate(models.Model):
    """A procedure-specific starting text, maintained by administrators.

    Chosen for a study by procedure code (OBR-4.1), else modality, else a template with both
    blank (the default).  Inactive templates are kept for history but not offered.
    """

    name = models.CharField(max_length=120, unique=True)
    procedure_code_value = models.CharField(max_length=64, blank=True, help_text="OBR-4.1; blank = any")
    modality = models.CharField(max_length=16, blank=True, help_text="(0008,0060); blank = any")
    findings = models.TextField(blank=True)
    impression = models.TextField(blank=True)
    active = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["procedure_code_value"]), models.Index(fields=["modality"])]

    def __str__(self) -> str:
        return self.name
