"""VNA destinations and study transfers (IHE RAD-10 Storage Commitment; dcm4chee's export tasks).

One ``Transfer`` per (study, destination, batch), written in the transaction that marks the
study complete (``pacs.services.completion``); the Celery task ``pacs.send_transfer`` is given
its ID.  ``TransferItem`` keeps, per instance, whether it was sent and committed, so a
resumed transfer sends only what is missing and the study counts as archived only when
every instance is committed (PS3.4 J.3, Storage Commitment Push Model).

Statuses change only through ``ris.services.transitions.transition`` (entity "transfer"),
which records who did it (a retry or cancel from the transfers page names the user).
"""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from project.encryption import SealedField

KIND_DICOM = "dicom"
KIND_STOW = "stow"
KINDS = [(KIND_DICOM, "DICOM C-STORE + storage commitment"), (KIND_STOW, "DICOMweb STOW-RS")]

# Transfer status (table ris.states.TABLES["transfer"]).
SCHEDULED = "SCHEDULED"
IN_PROGRESS = "IN_PROGRESS"
COMMITTING = "COMMITTING"  # every instance sent, waiting for the N-EVENT-REPORT
RETRYING = "RETRYING"  # a transient failure; next attempt at next_attempt_at
COMMITTED = "COMMITTED"
FAILED = "FAILED"
CANCELED = "CANCELED"
STATUSES = (SCHEDULED, IN_PROGRESS, COMMITTING, RETRYING, COMMITTED, FAILED, CANCELED)
OPEN = frozenset({SCHEDULED, IN_PROGRESS, COMMITTING, RETRYING})
FINAL = frozenset({COMMITTED, FAILED, CANCELED})

# Transfer item status.
ITEM_PENDING = "PENDING"
ITEM_SENT = "SENT"
ITEM_COMMITTED = "COMMITTED"
ITEM_FAILED = "FAILED"
ITEM_STATUSES = (ITEM_PENDING, ITEM_SENT, ITEM_COMMITTED, ITEM_FAILED)


class VnaDestination(models.Model):
    """A vendor-neutral archive: a DICOM AE (C-STORE + storage commitment) or a STOW-RS URL.

    Rows with ``from_environment`` are (re)written from ``VNA_DESTINATIONS`` at start
    (``pacs.services.routing.destinations.sync_environment_destinations``).
    """

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=8, choices=KINDS, default=KIND_DICOM)
    ae_title = models.CharField(max_length=16, blank=True, help_text="called AE title (DICOM)")
    host = models.CharField(max_length=255, blank=True)
    port = models.PositiveIntegerField(null=True, blank=True)
    url = models.CharField(max_length=500, blank=True, help_text="DICOMweb base URL (STOW-RS), e.g. http://h:8042/dicom-web")
    # Credentials for the STOW-RS endpoint, stored sealed (project.encryption).
    username = SealedField(blank=True)
    password = SealedField(blank=True)
    # DICOM over TLS (PS3.15 B.9, BCP 195): the VNA's certificate verified against
    # TLS_CA_CERTIFICATES and its host name checked; never falls back to clear text.
    tls = models.BooleanField("TLS", default=False, help_text="DICOM over TLS (dicoms://): the VNA's certificate is verified")
    storage_commitment = models.BooleanField(default=True, help_text="ask for storage commitment (DICOM)")
    # The VNA's HL7 ADT receiver (MLLP), if it takes patient changes as HL7: A08 and A40 then reach
    # it as ADT^A08 / ADT^A40 through the HL7 outbox; without it, as a re-send of the images with
    # the corrected patient attributes (pacs.services.routing.patient_changes).
    adt_host = models.CharField("ADT host", max_length=255, blank=True,
                                help_text="the VNA's HL7 receiver for ADT^A08 / ADT^A40 (MLLP); empty: the VNA "
                                          "takes DICOM only, patient changes are sent as a re-send of the images")
    adt_port = models.PositiveIntegerField("ADT port", null=True, blank=True,
                                           validators=[MinValueValidator(1), MaxValueValidator(65535)])
    adt_tls = models.BooleanField("ADT over TLS", default=False,
                                  help_text="mllps://: the receiver's certificate is verified against TLS_CA_CERTIFICATES")
    enabled = models.BooleanField(default=True)
    from_environment = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "VNA destination"
        ordering = ["name"]

    def __str__(self) -> str:
        if self.kind == KIND_DICOM:
            scheme = "dicoms" if self.tls else "dicom"
            return f"{self.name} ({scheme}://{self.ae_title}@{self.host}:{self.port})"
        return f"{self.name} ({self.url})"

    @property
    def takes_adt(self) -> bool:
        """Whether patient changes reach this VNA as HL7 ADT messages (its MLLP address is set)."""
        return bool(self.adt_host and self.adt_port)

    @property
    def adt_url(self) -> str:
        return f"{'mllps' if self.adt_tls else 'mllp'}://{self.adt_host}:{self.adt_port}" if self.takes_adt else ""


class Transfer(models.Model):
    study = models.ForeignKey("pacs.Study", on_delete=models.PROTECT, related_name="transfers")
    destination = models.ForeignKey(VnaDestination, on_delete=models.PROTECT, related_name="transfers")
    batch = models.PositiveIntegerField(help_text="the study's completion this transfer sends")
    # A re-send of a study already in the VNA with the patient's corrected attributes (an A08 or
    # A40 applied after it left): numbered per study and destination; 0 for a batch of images.
    patient_update = models.PositiveIntegerField(
        default=0, help_text="0: a batch of images; n: the n-th re-send with the patient's corrected attributes")
    patient_event = models.CharField(max_length=3, blank=True,
                                     help_text="the patient change a re-send carries: A08 or A40")
    status = models.CharField(max_length=16, choices=[(s, s) for s in STATUSES], default=SCHEDULED)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(help_text="a sweep re-queues the row after this if no worker holds it")
    lease_expires_at = models.DateTimeField(null=True, blank=True, help_text="while a worker holds it")
    reason = models.TextField(blank=True, help_text="last failure, as shown on the transfers page")
    transaction_uid = models.CharField(max_length=64, blank=True, db_index=True, help_text="storage commitment")
    commitment_requested_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["study", "destination", "batch", "patient_update"],
                                    name="uniq_transfer_per_study_batch_update")
        ]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]
        ordering = ["-created_at"]

    def __str__(self) -> str:
        update = f" patient update {self.patient_update} ({self.patient_event})" if self.patient_update else ""
        return (f"transfer {self.pk} study {self.study_id} batch {self.batch}{update} -> {self.destination_id} "
                f"{self.status}")


class TransferItem(models.Model):
    transfer = models.ForeignKey(Transfer, on_delete=models.CASCADE, related_name="items")
    instance = models.ForeignKey("pacs.Instance", on_delete=models.PROTECT, related_name="transfer_items")
    status = models.CharField(max_length=16, choices=[(s, s) for s in ITEM_STATUSES], default=ITEM_PENDING)
    reason = models.CharField(max_length=255, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    committed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["transfer", "instance"], name="uniq_transfer_item")]
        indexes = [models.Index(fields=["transfer", "status"])]
