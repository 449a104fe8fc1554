"""The HL7 gateway follows the RIS domain through its signals (``ris.signals``).

A report signed: one ORU^R01 (HL7 v2.5.1 chapter 7, 7.3.1) per enabled destination is queued
in the signing transaction (``hl7gateway.outbox.enqueue.enqueue_oru``), so that the rows commit or roll
back with the signature; the delivery tasks are published after the commit.
"""

from __future__ import annotations

from django.dispatch import receiver

from ris.signals import report_signed


@receiver(report_signed, dispatch_uid="hl7gateway.report_signed")
def on_report_signed(sender, report_version, **kwargs) -> None:
    # Here, not at the top: this module is loaded with the apps in every process, and the outbox
    # (ORU rendering, MLLP client, TLS) is a heavy import that only signing needs.
    from hl7gateway.outbox import enqueue

    enqueue.enqueue_oru(report_version.pk)
