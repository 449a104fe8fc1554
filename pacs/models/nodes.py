"""Imaging-side models.  DICOM nodes (remote AEs) and what later issues add
(MPPS, the Study/Series/Instance index, VNA transfers)."""

from __future__ import annotations

from django.db import models


class DicomNode(models.Model):
    """A known remote application entity (a modality, a workstation, a VNA).

    When DICOM_ALLOW_UNKNOWN_AE is off only calling AE titles listed here may associate,
    and only for the services ticked (reliability D-01, D-02).
    """

    ae_title = models.CharField(max_length=16, unique=True, help_text="the remote's AE title")
    host = models.CharField(max_length=255, blank=True, help_text="host name or IP; empty: any")
    port = models.PositiveIntegerField(null=True, blank=True, help_text="its listening port, if it has one")
    description = models.CharField(max_length=255, blank=True)
    allow_echo = models.BooleanField(default=True)
    allow_mwl_find = models.BooleanField(default=True, help_text="may query the Modality Worklist")
    allow_mpps = models.BooleanField(default=True)
    allow_store = models.BooleanField(default=True, help_text="may send images (C-STORE)")
    # The MWL station filter: steps scheduled for this AE title when the query has no
    # ScheduledStationAETitle and MWL_FILTER_BY_CALLING_AE is on.  Empty: the AE title.
    station_ae_title = models.CharField(max_length=16, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "DICOM node"
        ordering = ["ae_title"]

    def __str__(self) -> str:
        return f"{self.ae_title} ({self.host or 'any host'}:{self.port or '-'})"
