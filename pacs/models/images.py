"""The image index: Study / Series / Instance (DICOM PS3.3 C.7 patient-study-series-instance).

Files live under ``STORAGE_DIR`` at a path derived only from validated UIDs
(``pacs.storage``); ``Instance.path`` is relative to it.  A study is matched to its order
(``requested_procedure``) by ``pacs.services.order_matching``; statuses change only
through ``ris.services.transitions.transition`` (entity "study", table in ``ris.states``).

``batch`` numbers the completions of a study: when a study completes, every instance
without a batch gets the next number and one transfer per destination sends that batch.
A late instance re-opens the study and is sent on by itself in the next batch.

``StoreConflict`` records a C-STORE of a SOP Instance UID already stored, with other content,
and what ``STORE_OVERWRITE_POLICY`` did with it (``pacs.services.resends``).
"""

from __future__ import annotations

from django.db import models

# Study status (our own; table ris.states.TABLES["study"]).
RECEIVING = "RECEIVING"  # instances arriving, or an unmatched study waiting for a person
COMPLETE = "COMPLETE"  # complete and matched; transfers written
ARCHIVED = "ARCHIVED"  # every instance committed by every VNA destination
STATUSES = (RECEIVING, COMPLETE, ARCHIVED)

# How the study found its order (pacs.services.order_matching): AccessionNumber (0008,0050),
# else StudyInstanceUID (0020,000D), else patient + study date + modality.
MATCH_NONE = ""
MATCH_ACCESSION = "accession"
MATCH_STUDY_UID = "study_uid"
MATCH_PATIENT_DATE_MODALITY = "patient_date_modality"
MATCH_MANUAL = "manual"
MATCH_NEW_ORDER = "new_order"
MATCH_CHOICES = [
    (MATCH_NONE, "unmatched"),
    (MATCH_ACCESSION, "accession number"),
    (MATCH_STUDY_UID, "Study Instance UID"),
    (MATCH_PATIENT_DATE_MODALITY, "patient, date and modality"),
    (MATCH_MANUAL, "linked by a person"),
    (MATCH_NEW_ORDER, "new order created by a person"),
]


class Study(models.Model):
    """One study as received: attributes as the modality sent them, and its match."""

    study_instance_uid = models.CharField(max_length=64, unique=True, help_text="(0020,000D)")
    accession_number = models.CharField(max_length=16, blank=True, db_index=True, help_text="(0008,0050)")
    issuer_of_accession_number = models.CharField(
        max_length=64, blank=True, help_text="(0008,0051) > LocalNamespaceEntityID"
    )
    patient_id = models.CharField(max_length=64, blank=True, db_index=True, help_text="(0010,0020)")
    issuer_of_patient_id = models.CharField(max_length=64, blank=True, help_text="(0010,0021)")
    patient_name = models.CharField(max_length=320, blank=True, help_text="(0010,0010)")
    patient_birth_date = models.CharField(max_length=8, blank=True, help_text="(0010,0030) DA as sent")
    patient_sex = models.CharField(max_length=16, blank=True, help_text="(0010,0040)")
    study_date = models.DateField(null=True, blank=True, help_text="(0008,0020)")
    study_time = models.CharField(max_length=16, blank=True, help_text="(0008,0030)")
    study_description = models.CharField(max_length=64, blank=True, help_text="(0008,1030)")
    modalities_in_study = models.CharField(max_length=64, blank=True, help_text="(0008,0061), backslash-separated")
    calling_ae_title = models.CharField(max_length=16, blank=True, help_text="AE that sent the first instance")

    requested_procedure = models.ForeignKey(
        "ris.RequestedProcedure", null=True, blank=True, on_delete=models.SET_NULL, related_name="studies"
    )
    match_method = models.CharField(max_length=32, choices=MATCH_CHOICES, blank=True, default=MATCH_NONE)
    # Fields where the images disagree with the order's patient: [{"keyword", "received", "order"}].
    demographics_mismatch = models.JSONField(default=list, blank=True)
    # What is rewritten on the way to the VNA: {keyword: [received, corrected]}.
    corrections = models.JSONField(default=dict, blank=True)

    status = models.CharField(max_length=16, choices=[(s, s) for s in STATUSES], default=RECEIVING)
    batch = models.PositiveIntegerField(default=0, help_text="completions so far")
    first_received_at = models.DateTimeField(auto_now_add=True)
    last_received_at = models.DateTimeField(db_index=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    archived_at = models.DateTimeField(null=True, blank=True)
    purged_at = models.DateTimeField(null=True, blank=True, help_text="local files deleted after retention")
    recalled_at = models.DateTimeField(
        null=True, blank=True, help_text="purged files fetched back from the VNA; retention counts from here")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "studies"
        indexes = [models.Index(fields=["status", "last_received_at"]), models.Index(fields=["match_method"]),
                   # Query/Retrieve: StudyDate ranges, and answers in study date and time order
                   models.Index(fields=["study_date", "study_time"])]
        ordering = ["-last_received_at"]

    def __str__(self) -> str:
        return f"{self.accession_number or '-'} {self.study_instance_uid}"

    @property
    def is_matched(self) -> bool:
        return self.requested_procedure_id is not None


class Series(models.Model):
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="series")
    series_instance_uid = models.CharField(max_length=64, unique=True, help_text="(0020,000E)")
    modality = models.CharField(max_length=16, blank=True, help_text="(0008,0060)")
    series_number = models.IntegerField(null=True, blank=True, help_text="(0020,0011)")
    series_description = models.CharField(max_length=64, blank=True, help_text="(0008,103E)")
    body_part_examined = models.CharField(max_length=16, blank=True, help_text="(0018,0015), PS3.3 C.7.3.1")

    class Meta:
        verbose_name_plural = "series"

    def __str__(self) -> str:
        return self.series_instance_uid


class Instance(models.Model):
    """One stored SOP instance: its file (relative to STORAGE_DIR) and what routing needs."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="instances")
    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="instances")
    sop_instance_uid = models.CharField(max_length=64, unique=True, help_text="(0008,0018)")
    sop_class_uid = models.CharField(max_length=64, help_text="(0008,0016)")
    transfer_syntax_uid = models.CharField(max_length=64, help_text="(0002,0010) as stored")
    instance_number = models.IntegerField(null=True, blank=True, help_text="(0020,0013)")
    path = models.CharField(max_length=255, help_text="relative to STORAGE_DIR")
    size = models.BigIntegerField(help_text="file size in bytes")
    batch = models.PositiveIntegerField(null=True, blank=True, help_text="completion that sent it; null: not yet")
    received_at = models.DateTimeField()
    dataset_sha256 = models.CharField(
        max_length=64, blank=True, default="", help_text="SHA-256 (hex) of the data set as received; empty: unknown"
    )

    class Meta:
        indexes = [models.Index(fields=["study", "batch"])]

    def __str__(self) -> str:
        return self.sop_instance_uid


class StudyLink(models.Model):
    """A person linked an unmatched (or wrongly matched) study to an order: who, when, what changed."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="links")
    requested_procedure = models.ForeignKey("ris.RequestedProcedure", on_delete=models.PROTECT, related_name="+")
    created_order = models.BooleanField(default=False, help_text="a new filler order (ORC-1 SN) was created")
    corrections = models.JSONField(default=dict, blank=True)
    actor = models.CharField(max_length=150)
    note = models.CharField(max_length=255, blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"study {self.study_id} -> {self.requested_procedure_id} by {self.actor}"


# What was done with a resend of a stored SOP Instance UID with other content (STORE_OVERWRITE_POLICY).
OVERWRITE_KEEP = "keep"  # the stored version stays; the resend is dropped
OVERWRITE_REPLACE = "replace"  # the resend replaces file and index; the old file is kept until archived
OVERWRITE_REJECT = "reject"  # the resend is refused with a failure status
OVERWRITE_POLICIES = (OVERWRITE_KEEP, OVERWRITE_REPLACE, OVERWRITE_REJECT)


class StoreConflict(models.Model):
    """A C-STORE of a stored SOP Instance UID whose data set differs from the stored one
    (PS3.4 B.4.1: an SOP Instance UID names one content): which attributes differ, what the
    policy did.  ``differences``: [{"keyword", "stored", "received"}] (values shortened; a
    pixel data difference is given as the SHA-256 of each version's Pixel Data onwards)."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="store_conflicts",
                              help_text="the study the stored version belonged to")
    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="store_conflicts")
    sop_instance_uid = models.CharField(max_length=64, db_index=True, help_text="(0008,0018)")
    policy = models.CharField(max_length=8, choices=[(p, p) for p in OVERWRITE_POLICIES])
    differences = models.JSONField(default=list, blank=True)
    stored_sha256 = models.CharField(max_length=64, blank=True)
    received_sha256 = models.CharField(max_length=64, blank=True)
    calling_ae_title = models.CharField(max_length=16, blank=True)
    replaced_path = models.CharField(
        max_length=255, blank=True, help_text="replace: the old version, relative to STORAGE_DIR, until archived"
    )
    replaced_removed_at = models.DateTimeField(null=True, blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.sop_instance_uid} {self.policy} at {self.at:%Y-%m-%d %H:%M}"

    @property
    def keywords(self) -> list[str]:
        return [d.get("keyword", "") for d in self.differences]
