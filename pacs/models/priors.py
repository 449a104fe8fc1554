"""Fetches of studies from the VNA (PS3.4 C.4.2 C-MOVE to the engine's own AE), for two purposes:

- a relevant **prior**: an earlier study of an ordered procedure's patient chosen for comparison
  (IHE SWF "prefetch").  One row per (requested procedure, prior Study Instance UID), written by
  ``pacs.services.priors.find_priors`` after the order is committed;
- a **recall**: a study whose local files were purged after archiving, asked for by a DICOMweb
  client or a Query/Retrieve C-MOVE / C-GET (``pacs.services.recall``).  No requested procedure;
  at most one open recall per study, a new row each time the study is recalled again.

A row the engine already holds is READY at once; otherwise it is SCHEDULED and fetched by the
Celery task ``pacs.fetch_prior`` (``pacs.services.priors.run_fetch``: one fetch path for both)
with the retries, backoff and lease of VNA routing; its state, attempts and last failure show on
the fetches page.
"""

from __future__ import annotations

from django.db import models

# Prior status.
SCHEDULED = "SCHEDULED"  # to fetch from the VNA
IN_PROGRESS = "IN_PROGRESS"  # a worker holds it (C-MOVE under way)
RETRYING = "RETRYING"  # a transient failure; next attempt at next_attempt_at
READY = "READY"  # held by the engine
FAILED = "FAILED"
STATUSES = (SCHEDULED, IN_PROGRESS, RETRYING, READY, FAILED)
OPEN = frozenset({SCHEDULED, IN_PROGRESS, RETRYING})

# Why the study is fetched.
PRIOR = "prior"  # a relevant prior of an ordered procedure
RECALL = "recall"  # a purged study asked for by a DICOMweb or Query/Retrieve client
PURPOSES = (PRIOR, RECALL)


class Prior(models.Model):
    requested_procedure = models.ForeignKey("ris.RequestedProcedure", null=True, blank=True,
                                            on_delete=models.CASCADE, related_name="priors",
                                            help_text="the ordered procedure; empty for a recall")
    purpose = models.CharField(max_length=8, choices=[(p, p) for p in PURPOSES], default=PRIOR)
    requested_by = models.CharField(max_length=150, blank=True,
                                    help_text="a recall: who asked (user name or calling AE title) and how")
    study_instance_uid = models.CharField(max_length=64, help_text="(0020,000D) of the prior study")
    patient_id = models.CharField(max_length=64, blank=True, help_text="(0010,0020) it was found under")
    issuer_of_patient_id = models.CharField(max_length=64, blank=True, help_text="(0010,0021)")
    study_date = models.DateField(null=True, blank=True, help_text="(0008,0020)")
    study_description = models.CharField(max_length=64, blank=True, help_text="(0008,1030)")
    modalities_in_study = models.CharField(max_length=64, blank=True, help_text="(0008,0061), backslash-separated")
    accession_number = models.CharField(max_length=16, blank=True, help_text="(0008,0050)")
    number_of_instances = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="(0020,1208) NumberOfStudyRelatedInstances the VNA answered; empty: not known")
    source = models.ForeignKey("pacs.VnaDestination", null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="+", help_text="the VNA it is fetched from; empty: held locally")
    status = models.CharField(max_length=16, choices=[(s, s) for s in STATUSES], default=SCHEDULED)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True, help_text="while a worker holds it")
    reason = models.TextField(blank=True, help_text="last failure")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["requested_procedure", "study_instance_uid"],
                                               name="uniq_prior_per_procedure"),
                       models.UniqueConstraint(fields=["study_instance_uid"], name="uniq_open_recall_per_study",
                                               condition=models.Q(purpose=RECALL, status__in=sorted(OPEN)))]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]
        ordering = ["-study_date", "-pk"]

    def __str__(self) -> str:
        if self.purpose == RECALL:
            return f"recall {self.study_instance_uid} {self.status}"
        return f"prior {self.study_instance_uid} of procedure {self.requested_procedure_id} {self.status}"


class PriorSearch(models.Model):
    """The search for one requested procedure's priors, written in the order's transaction: a
    search whose task could not be queued (the broker down when the order committed) or was lost
    is queued again by the sweep until it has run (``pacs.services.prior_searches``)."""

    requested_procedure = models.OneToOneField("ris.RequestedProcedure", on_delete=models.CASCADE,
                                               related_name="prior_search", help_text="the ordered procedure")
    created_at = models.DateTimeField(auto_now_add=True)
    next_attempt_at = models.DateTimeField(help_text="not queued again by the sweep before this")
    finished_at = models.DateTimeField(null=True, blank=True, help_text="when the priors were chosen; empty: to do")
    requeued = models.PositiveIntegerField(default=0, help_text="times the sweep queued it again")

    class Meta:
        indexes = [models.Index(fields=["finished_at", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"prior search of procedure {self.requested_procedure_id}"
