"""The inbound HL7 message log: every message received, its ACK and its effect.

The row and the domain change it causes are committed in one transaction before the
ACK is written to the socket: an AA is never sent for a message that a crash could lose
(HL7 v2.5.1 section 2.9.2, original acknowledgement mode; docs/hl7-interface.md 1.6).
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class InboundMessage(models.Model):
    STATUS_APPLIED = "APPLIED"  # AA sent
    STATUS_ERROR = "ERROR"  # AE sent: application error (unknown order, missing field ...)
    STATUS_REJECTED = "REJECTED"  # AR sent: unsupported type/version, unparseable
    STATUS_COLLISION = "COLLISION"  # same (MSH-3, MSH-4, MSH-10) as an earlier message, other content
    STATUS_REFUSED = "REFUSED"  # AR sent: undeclared sender or a type not granted (hl7gateway.senders)
    STATUS_CHOICES = [(s, s) for s in (STATUS_APPLIED, STATUS_ERROR, STATUS_REJECTED, STATUS_COLLISION,
                                       STATUS_REFUSED)]

    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    peer = models.CharField(max_length=64, blank=True, help_text="remote address:port")
    sending_application = models.CharField(max_length=180, blank=True, help_text="MSH-3")
    sending_facility = models.CharField(max_length=180, blank=True, help_text="MSH-4")
    receiving_application = models.CharField(max_length=180, blank=True, help_text="MSH-5")
    receiving_facility = models.CharField(max_length=180, blank=True, help_text="MSH-6")
    message_control_id = models.CharField(max_length=199, blank=True, help_text="MSH-10")
    message_type = models.CharField(max_length=20, blank=True, help_text="MSH-9, e.g. ORM^O01")
    version_id = models.CharField(max_length=20, blank=True, help_text="MSH-12")
    character_set = models.CharField(max_length=32, blank=True, help_text="MSH-18 or the default used")
    raw = models.BinaryField(help_text="the bytes between the MLLP start and end blocks")
    content_sha256 = models.CharField(max_length=64, help_text="digest of raw, for duplicate detection")
    status = models.CharField(max_length=16, choices=STATUS_CHOICES)
    ack_code = models.CharField(max_length=2, blank=True, help_text="MSA-1 sent: AA, AE or AR")
    ack = models.BinaryField(null=True, blank=True, help_text="the ACK message sent (without framing)")
    error_code = models.CharField(max_length=8, blank=True, help_text="ERR-3 (HL7 table 0357)")
    error_location = models.CharField(max_length=64, blank=True, help_text="ERR-2, e.g. ORC^1^1")
    error_text = models.TextField(blank=True)
    # Searchable identifiers extracted from the message (PID-3.1, OBR-18/IPC-1).
    patient_id = models.CharField(max_length=64, blank=True, db_index=True)
    accession_numbers = models.CharField(max_length=255, blank=True, db_index=True)
    duplicate_count = models.PositiveIntegerField(default=0, help_text="identical resends answered from this row")
    effect = models.JSONField(default=dict, blank=True, help_text="what the message changed (ids)")
    # A replay of an earlier message by an operator (monitoring.replay) points at the original.
    replay_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="replays")

    class Meta:
        constraints = [
            # The duplicate key (MSH-3, MSH-4, MSH-10; MSH-10 is unique per sender, HL7 v2.5.1
            # section 2.14.9.10): one original per key.  A refused message holds no key: once
            # its sender is declared, the resend is applied.
            models.UniqueConstraint(
                fields=["sending_application", "sending_facility", "message_control_id"],
                condition=~Q(status__in=["COLLISION", "REFUSED"]) & ~Q(message_control_id="")
                & Q(replay_of__isnull=True),
                name="uniq_inbound_msh_key",
            )
        ]
        indexes = [
            models.Index(fields=["message_control_id"]),
            models.Index(fields=["sending_application", "sending_facility", "received_at"]),
            models.Index(fields=["message_type", "received_at"]),
            models.Index(fields=["status", "received_at"]),
        ]
        ordering = ["-received_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.message_type} {self.message_control_id} from {self.sending_application}/{self.sending_facility}"
