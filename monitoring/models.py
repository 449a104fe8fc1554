"""Alarm rules, alarms, and the per-AE record of DICOM operations.

An ``AlarmRule`` says which interface condition to watch and whom to tell; the beat task
``monitoring.evaluate_alarms`` (``monitoring.services.evaluate``) opens an ``Alarm`` per
(rule, interface key) when the condition holds and clears it when it stops.  One open alarm
per (rule, interface key) at a time (a partial unique constraint), so each opening and each
clearing is notified exactly once, whatever number of checks or beat processes run.

``DicomOperation`` counts DIMSE operations per hour, calling AE, operation and status
(gathered by the DIMSE handlers and upserted in the background: ``monitoring.dicom_log``); there was
no per-AE record of DICOM operations before.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q

INBOUND_SILENCE = "inbound_silence"
OUTBOUND_BACKLOG = "outbound_backlog"
ERROR_RATE = "error_rate"
UNMATCHED_STUDY = "unmatched_study"
TRANSFER_FAILED = "transfer_failed"
DICOM_REFUSED = "dicom_refused"
HL7_REFUSED = "hl7_refused"
CERTIFICATE_EXPIRY = "certificate_expiry"
AUDIT_BACKLOG = "audit_backlog"
MODALITY_SILENT = "modality_silent"
COMMITMENT_UNANSWERED = "commitment_unanswered"
STAT_UNREAD = "stat_unread"
ORU_UNDELIVERED = "oru_undelivered"
#: The kinds whose threshold is a setting, not ``AlarmRule.threshold_minutes`` (hand-offs left
#: dangling in the department: the same limit on the console, in /metrics and in the alarm).
SETTING_THRESHOLDS = {
    MODALITY_SILENT: "ALARM_MODALITY_SILENCE_MINUTES",
    COMMITMENT_UNANSWERED: "ALARM_STORAGE_COMMITMENT_MINUTES",
    STAT_UNREAD: "ALARM_STAT_UNREAD_MINUTES",
    ORU_UNDELIVERED: "ALARM_ORU_UNDELIVERED_MINUTES",
}
KIND_CHOICES = [
    (INBOUND_SILENCE, "no inbound HL7 from a sender for longer than N minutes"),
    (OUTBOUND_BACKLOG, "outbound HL7 backlog: oldest undelivered message older than N minutes"),
    (ERROR_RATE, "error rate (HL7 AE/AR, DICOM failure statuses) over the window above a threshold"),
    (UNMATCHED_STUDY, "an unmatched study older than N minutes"),
    (TRANSFER_FAILED, "a VNA transfer failed"),
    (DICOM_REFUSED, "DICOM associations refused from a source address (not a declared node) within N minutes"),
    (HL7_REFUSED, "inbound HL7 refused (undeclared sender, or a type not granted) within the last N minutes"),
    (CERTIFICATE_EXPIRY, "a configured TLS certificate is unreadable, expired or expires within TLS_EXPIRY_WARNING_DAYS"),
    (AUDIT_BACKLOG, "audit trail not exported: oldest record not yet at the Audit Record Repository older than N minutes"),
    (MODALITY_SILENT, "a declared modality sends nothing (no C-STORE, MPPS or MWL query) while steps are scheduled "
                      "for it, for longer than ALARM_MODALITY_SILENCE_MINUTES"),
    (COMMITMENT_UNANSWERED, "a storage commitment request to a VNA not answered within ALARM_STORAGE_COMMITMENT_MINUTES"),
    (STAT_UNREAD, "a STAT study ready to read and without a final report after ALARM_STAT_UNREAD_MINUTES"),
    (ORU_UNDELIVERED, "a final report whose ORU^R01 a destination has not acknowledged within "
                      "ALARM_ORU_UNDELIVERED_MINUTES"),
]

# What the interface key of each kind names (empty: every interface of the kind, one alarm each).
INTERFACE_KEY_HELP = (
    "inbound_silence: SENDING_APP^SENDING_FACILITY (MSH-3^MSH-4; required); "
    "outbound_backlog: ORU destination name; "
    "error_rate: hl7:APP^FACILITY, oru:destination or dicom:CALLING_AE; "
    "unmatched_study: calling AE title; transfer_failed: VNA destination name; "
    "dicom_refused: source IP address; "
    "hl7_refused: the source address; "
    "certificate_expiry: the setting (TLS_CERTIFICATE, TLS_CA_CERTIFICATES); "
    "audit_backlog: the Audit Record Repository, host:port; "
    "modality_silent: the modality's AE title; commitment_unanswered: VNA destination name; "
    "stat_unread: the modality (0008,0060); oru_undelivered: ORU destination name. "
    "Empty = each interface of the kind separately."
)


class AlarmRule(models.Model):
    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=32, choices=KIND_CHOICES)
    interface_key = models.CharField(max_length=200, blank=True, help_text=INTERFACE_KEY_HELP)
    threshold_minutes = models.PositiveIntegerField(
        default=60, help_text="silence / backlog age / unmatched age in minutes; error_rate: the window; "
                              "not used by modality_silent, commitment_unanswered, stat_unread and "
                              "oru_undelivered (their ALARM_..._MINUTES setting)"
    )
    threshold_rate = models.FloatField(
        null=True, blank=True, help_text="error_rate only: fraction of errors (0.2 = 20%) above which it opens"
    )
    min_count = models.PositiveIntegerField(
        default=1, help_text="error_rate only: fewer operations than this in the window never open it"
    )
    # Schedule: empty weekdays and hours = always active.  Weekdays as digits, Monday = 0
    # ("01234" = Monday to Friday); hours in the department's TIME_ZONE, [start, end).
    schedule_weekdays = models.CharField(max_length=7, blank=True, help_text='e.g. "01234" = Mon-Fri; empty = every day')
    schedule_start_hour = models.PositiveSmallIntegerField(null=True, blank=True, help_text="0-23; empty = all day")
    schedule_end_hour = models.PositiveSmallIntegerField(null=True, blank=True, help_text="1-24, exclusive")
    notify_emails = models.TextField(blank=True, help_text="comma- or newline-separated addresses")
    webhook_url = models.URLField(max_length=500, blank=True, help_text="JSON POST on open and clear")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind} {self.interface_key or '*'})"

    @property
    def email_list(self) -> list[str]:
        return [a.strip() for a in self.notify_emails.replace("\n", ",").split(",") if a.strip()]


class Alarm(models.Model):
    """One episode of a rule's condition for one interface: opened, then cleared."""

    rule = models.ForeignKey(AlarmRule, on_delete=models.CASCADE, related_name="alarms")
    interface_key = models.CharField(max_length=200, blank=True)
    opened_at = models.DateTimeField()
    cleared_at = models.DateTimeField(null=True, blank=True)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_value = models.FloatField(null=True, blank=True, help_text="minutes, rate or count at the last check")
    message = models.CharField(max_length=500, help_text="what held, without patient data")
    open_notified_at = models.DateTimeField(null=True, blank=True)
    clear_notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "interface_key"], condition=Q(cleared_at__isnull=True), name="uniq_open_alarm"
            )
        ]
        indexes = [models.Index(fields=["cleared_at", "opened_at"])]
        ordering = ["-opened_at", "-pk"]

    def __str__(self) -> str:
        state = "open" if self.cleared_at is None else "cleared"
        return f"{self.rule.name} {self.interface_key or '*'} {state}"

    @property
    def is_open(self) -> bool:
        return self.cleared_at is None


class DicomOperation(models.Model):
    """DIMSE operations per hour, calling AE, operation and status (a counter, not a log)."""

    C_STORE = "C-STORE"
    MWL_FIND = "MWL C-FIND"
    MPPS_N_CREATE = "MPPS N-CREATE"
    MPPS_N_SET = "MPPS N-SET"
    C_ECHO = "C-ECHO"

    hour = models.DateTimeField(help_text="start of the hour (UTC)")
    calling_ae_title = models.CharField(max_length=16, blank=True)
    operation = models.CharField(max_length=16)
    status = models.PositiveIntegerField(help_text="DIMSE status answered, e.g. 0 success, 0xA700, 0xC000")
    count = models.PositiveIntegerField(default=0)
    last_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["hour", "calling_ae_title", "operation", "status"], name="uniq_dicom_operation_hour"
            )
        ]
        indexes = [models.Index(fields=["calling_ae_title", "hour"])]
        ordering = ["-hour"]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}h {self.calling_ae_title} {self.operation} 0x{self.status:04X} x{self.count}"

    @property
    def is_failure(self) -> bool:
        # PS3.7 C: 0x0000 success, 0xFF00/0xFF01 pending, 0xFE00 cancel, 0xB000-0xBFFF warnings.
        return not (self.status == 0 or self.status in (0xFF00, 0xFF01, 0xFE00) or 0xB000 <= self.status <= 0xBFFF
                    or self.status == 0x0107 or self.status == 0x0116)


# The journey's and the replays' models, kept in their own module.
from monitoring.records import ReplayRecord, WorklistQueryResult  # noqa: E402,F401
