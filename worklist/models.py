"""The reading worklist: one row per study ready to read, claims, saved filters, API tokens.

``ReadingItem`` is the radiologists' list (not the DICOM Modality Worklist).  It copies the
columns the list sorts and filters on (priority, modality, patient name and ID, accession,
report status) from the RIS rows so that every list query is one indexed scan of one table,
also at 100,000 studies.  ``worklist.services`` keeps the copies in sync; nothing else writes
these rows.
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models
from django.db.models import Q

from ris import states
from ris.models.core import placer_flag

# Report status as shown on the reading worklist (mirror of ris.Report.status, UNREAD = no report yet).
UNREAD = "UNREAD"
DRAFT = "DRAFT"
PRELIMINARY = "PRELIMINARY"
FINAL = "FINAL"
ADDENDED = "ADDENDED"
REPORT_STATUSES = (UNREAD, DRAFT, PRELIMINARY, FINAL, ADDENDED)
REPORT_STATUS_CHOICES = [(s, s.title()) for s in REPORT_STATUSES]
# A study whose report is final (or addended) is read: it leaves the default "to read" view.
READ_STATUSES = frozenset({FINAL, ADDENDED})


def name_key(patient_name: str) -> str:
    """Search key of a DICOM PN (PS3.5 6.2): components joined by spaces, upper case.

    ``DOE^JANE`` -> ``DOE JANE``; free-text search matches its start (family name first).
    """
    return " ".join(part for part in patient_name.replace("=", "^").split("^") if part).upper()[:320]


class ReadingItem(models.Model):
    """One study (= one requested procedure = one accession) on the reading worklist."""

    requested_procedure = models.OneToOneField(
        "ris.RequestedProcedure", on_delete=models.CASCADE, related_name="reading_item"
    )
    ready_at = models.DateTimeField(help_text="when the study became ready to read (time waiting starts)")
    # Copies of the RIS columns the list sorts and filters on (kept in sync by worklist.services).
    priority_rank = models.PositiveSmallIntegerField(help_text="ris.states.PRIORITY_RANK: 0 = STAT")
    requested_procedure_priority = models.CharField(max_length=8, choices=states.PRIORITY_CHOICES)
    modality = models.CharField(max_length=16, blank=True, help_text="(0008,0060) of the first step")
    patient_name = models.CharField(max_length=320, blank=True, help_text="(0010,0010) DICOM PN")
    patient_name_key = models.CharField(max_length=320, blank=True, help_text="name_key(patient_name)")
    patient_id = models.CharField(max_length=64, blank=True, help_text="(0010,0020) = PID-3.1")
    issuer_of_patient_id = models.CharField(max_length=64, blank=True, help_text="(0010,0021) = PID-3.4")
    accession_number = models.CharField(max_length=16, help_text="(0008,0050)")
    requested_procedure_description = models.CharField(max_length=64, blank=True, help_text="(0032,1060)")
    study_instance_uid = models.CharField(max_length=64, help_text="(0020,000D)")
    report_status = models.CharField(max_length=12, choices=REPORT_STATUS_CHOICES, default=UNREAD)
    is_read = models.BooleanField(default=False, help_text="report final: out of the default 'to read' view")
    # The order placer's CA / DC (ris RequestedProcedure.placer_status): the row's flag.
    placer_status = models.CharField(max_length=16, blank=True, default=states.PLACER_NONE,
                                     choices=states.PLACER_STATUS_CHOICES, help_text="ORC-1 CA / DC of the placer")
    placer_status_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            # The default list: to read, STAT first, then longest waiting (keyset pagination on id).
            models.Index(fields=["is_read", "priority_rank", "ready_at", "id"], name="reading_default_idx"),
            models.Index(fields=["modality", "is_read", "priority_rank", "ready_at", "id"], name="reading_modality_idx"),
            models.Index(fields=["report_status", "priority_rank", "ready_at", "id"], name="reading_status_idx"),
            models.Index(fields=["priority_rank", "ready_at", "id"], name="reading_all_idx"),
            models.Index(fields=["ready_at"], name="reading_ready_at_idx"),
            models.Index(fields=["accession_number"], name="reading_accession_idx"),
            models.Index(fields=["patient_id"], name="reading_patient_id_idx"),
            # Prefix search on the name (LIKE 'DOE%') needs the pattern operator class on PostgreSQL.
            models.Index(fields=["patient_name_key"], name="reading_name_key_idx", opclasses=["varchar_pattern_ops"]),
        ]

    def __str__(self) -> str:
        return f"{self.accession_number} {self.requested_procedure_priority} {self.report_status}"

    @property
    def placer_flag(self) -> str:
        """"order cancelled by the EHR on <date>" (or discontinued), empty when the order stands."""
        return placer_flag(self.placer_status, self.placer_status_at)


class ReadingClaim(models.Model):
    """Who reads a study.  At most one ACTIVE claim (released_at IS NULL) per study: a partial
    unique index, so two radiologists opening the same study at once cannot both win.

    An active claim idle for ``READING_CLAIM_TIMEOUT_MINUTES`` (no autosave, no open) counts as
    expired; ``worklist.services`` closes it (reason EXPIRED) before anyone else may claim.
    """

    RELEASED = "RELEASED"
    FORCED = "FORCED"
    EXPIRED = "EXPIRED"
    SIGNED = "SIGNED"
    REASONS = [(r, r.title()) for r in (RELEASED, FORCED, EXPIRED, SIGNED)]

    requested_procedure = models.ForeignKey(
        "ris.RequestedProcedure", on_delete=models.CASCADE, related_name="reading_claims"
    )
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="reading_claims")
    claimed_at = models.DateTimeField()
    last_activity_at = models.DateTimeField()
    released_at = models.DateTimeField(null=True, blank=True)
    release_reason = models.CharField(max_length=10, choices=REASONS, blank=True)
    released_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["requested_procedure"], condition=Q(released_at__isnull=True), name="one_active_claim_per_study"
            )
        ]
        indexes = [models.Index(fields=["released_at", "last_activity_at"], name="reading_claim_idle_idx")]

    def __str__(self) -> str:
        return f"claim {self.requested_procedure_id} by {self.user_id}"


class SavedFilter(models.Model):
    """A radiologist's named reading worklist filter (the query string of the list)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="saved_filters")
    name = models.CharField(max_length=80)
    query = models.CharField(max_length=1000, help_text="URL query string of the filter form")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "name"], name="uniq_saved_filter_name")]
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ApiToken(models.Model):
    """A dictation system's token.  Only its SHA-256 is stored; the key is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=80, help_text="e.g. the dictation product")
    key_sha256 = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.user})"

    @staticmethod
    def digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()
