"""Declared HL7 senders, and the per-address record of the messages refused for want of one.

A ``DeclaredSender`` says that the application MSH-3 of facility MSH-4 (their first component,
the HD namespace ID, HL7 v2.5.1 section 2.A.33) may send from ``address`` (an IP address or a
CIDR network) the kinds of messages granted.  Rows come from the admin or from ``HL7_SENDERS``
(``declared_in_environment``: kept equal to the environment by ``hl7gateway.senders``); the
intake reads both the same way (``hl7gateway.senders.check``).

``InboundRefusal`` counts refused messages per source address and hour, with the last sender,
type and reason: the first ``HL7_REFUSED_LOG_LIMIT`` of an hour are also kept whole in the
inbound log (status REFUSED), the rest only counted here, so that a flood cannot fill the
database.  The operator's console raises its alarm from these rows.
"""

from __future__ import annotations

import ipaddress

from django.core.exceptions import ValidationError
from django.db import models

ORDERS = "orders"
PATIENTS = "patients"
MERGES = "merges"
GRANT_CHOICES = (ORDERS, PATIENTS, MERGES)


def validate_address(value: str) -> None:
    try:
        ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValidationError(f"{value!r} is neither an IP address nor a network (CIDR, e.g. 10.1.2.0/24)") from None


class DeclaredSender(models.Model):
    sending_application = models.CharField(max_length=180, help_text="MSH-3 (first component), e.g. EPIC")
    sending_facility = models.CharField(max_length=180, blank=True, help_text="MSH-4 (first component), e.g. HOSP")
    address = models.CharField(max_length=64, validators=[validate_address],
                               help_text="the source address it connects from: 10.1.2.7, or a network 10.1.2.0/24")
    may_send_orders = models.BooleanField(default=False, help_text="ORM^O01, OMI^O23 (new, cancel, status)")
    may_send_patients = models.BooleanField(default=False, help_text="ADT^A01, A04, A05, A08")
    may_send_merges = models.BooleanField(default=False, help_text="ADT^A40 patient merge")
    enabled = models.BooleanField(default=True)
    declared_in_environment = models.BooleanField(default=False, editable=False, help_text="declared by HL7_SENDERS")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["sending_application", "sending_facility", "address"],
                                    name="uniq_declared_sender"),
        ]
        ordering = ["sending_application", "sending_facility", "address"]

    def __str__(self) -> str:
        return f"{self.sending_application}^{self.sending_facility}@{self.address}"

    @property
    def grants(self) -> frozenset[str]:
        return frozenset(g for g in GRANT_CHOICES if getattr(self, f"may_send_{g}"))


class InboundRefusal(models.Model):
    hour = models.DateTimeField(help_text="start of the hour (UTC)")
    source_address = models.CharField(max_length=64)
    refused_count = models.PositiveIntegerField(default=0)
    first_at = models.DateTimeField()
    last_at = models.DateTimeField()
    last_sending_application = models.CharField(max_length=180, blank=True, help_text="MSH-3 of the last one")
    last_sending_facility = models.CharField(max_length=180, blank=True, help_text="MSH-4 of the last one")
    last_message_type = models.CharField(max_length=20, blank=True)
    last_reason = models.CharField(max_length=255, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["hour", "source_address"], name="uniq_inbound_refusal_hour"),
        ]
        indexes = [models.Index(fields=["last_at"])]
        ordering = ["-hour", "source_address"]

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}h {self.source_address} refused x{self.refused_count}"
