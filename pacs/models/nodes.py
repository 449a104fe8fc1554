"""Imaging-side models: DICOM nodes (the declared remote AEs) and the associations refused
because their calling AE was not one of them."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models

from project.peers import certificate_problem, host_problem


def validate_host(value: str) -> None:
    problem = host_problem(value)
    if problem:
        raise ValidationError(problem)


def validate_certificate_name(value: str) -> None:
    problem = certificate_problem(value)
    if problem:
        raise ValidationError(problem)


class DicomNode(models.Model):
    """A declared remote application entity (a modality, a workstation, a VNA).

    A calling AE title listed here may associate only from ``host`` and only for the services
    ticked (``pacs.dimse.policy``); other calling AE titles only from DICOM_UNKNOWN_AE_FROM.
    With a ``certificate_name`` it is admitted only over the DICOM TLS port (PS3.15 B.9) with a
    verified certificate of that name, and still only from ``host``.
    Rows with ``from_environment`` are (re)written from DICOM_NODES when the listener starts.
    """

    ae_title = models.CharField(max_length=16, unique=True, help_text="the remote's AE title")
    host = models.CharField(max_length=255, validators=[validate_host],
                            help_text="where it calls from: IP address, CIDR network (10.1.4.0/24) or host name")
    certificate_name = models.CharField(
        max_length=255, blank=True, validators=[validate_certificate_name],
        help_text="the TLS client certificate it must present (CN, DNS or IP name, signed by TLS_CA_CERTIFICATES); "
                  "empty: clear or TLS port, no certificate asked for")
    port = models.PositiveIntegerField(null=True, blank=True,
                                       help_text="its listening port, if it has one (a C-MOVE destination needs it)")
    description = models.CharField(max_length=255, blank=True)
    allow_echo = models.BooleanField(default=True)
    allow_mwl_find = models.BooleanField(default=True, help_text="may query the Modality Worklist")
    allow_mpps = models.BooleanField(default=True)
    allow_store = models.BooleanField(default=True, help_text="may send images (C-STORE)")
    allow_storage_commitment = models.BooleanField(
        default=False, help_text="may send Storage Commitment reports (N-EVENT-REPORT): a VNA")
    allow_query_retrieve = models.BooleanField(
        default=False, help_text="may query and retrieve the images held (Query/Retrieve C-FIND, C-MOVE, C-GET)")
    # The MWL station filter: steps scheduled for this AE title when the query has no
    # ScheduledStationAETitle and MWL_FILTER_BY_CALLING_AE is on.  Empty: the AE title.
    station_ae_title = models.CharField(max_length=16, blank=True)
    enabled = models.BooleanField(default=True)
    from_environment = models.BooleanField(default=False, help_text="declared in DICOM_NODES (edits are overwritten)")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "DICOM node"
        ordering = ["ae_title"]

    def __str__(self) -> str:
        return f"{self.ae_title} ({self.host or 'no host'}:{self.port or '-'})"


class DicomRefusal(models.Model):
    """Associations refused by the association policy, counted per hour, source address and
    reason (a counter, not a log; the operator's console raises an alarm per address)."""

    UNKNOWN_AE = "unknown calling AE"
    UNEXPECTED_ADDRESS = "unexpected address"
    CERTIFICATE = "certificate not presented"  # a node with a certificate name, without that certificate

    hour = models.DateTimeField(help_text="start of the hour (UTC)")
    address = models.CharField(max_length=45, help_text="source IP address of the connection")
    reason = models.CharField(max_length=32)
    calling_ae_title = models.CharField(max_length=16, blank=True, help_text="the last one refused")
    count = models.PositiveIntegerField(default=0)
    last_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["hour", "address", "reason"], name="uniq_dicom_refusal_hour")
        ]
        indexes = [models.Index(fields=["last_at"])]
        ordering = ["-hour"]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}h {self.address} {self.reason} x{self.count}"
