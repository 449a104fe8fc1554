"""Prometheus metrics computed from the database at scrape time (a custom collector).

Every process (web, MLLP, DICOM, workers) writes to the database, so reading the figures
there at each scrape is right across processes, with no shared in-memory counters.  Labels
are interface names (sender MSH-3^MSH-4, destination names, calling AE titles), statuses
and rule names; never a patient identifier or accession number.

Who may scrape: see ``monitoring.views.metrics`` (METRICS_ALLOWED_IPS / METRICS_BEARER_TOKEN).
"""

from __future__ import annotations

from django.db.models import Count, Max
from django.utils import timezone
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest

from hl7gateway.models import OutboundAttempt, OutboundMessage
from monitoring import selectors, services
from monitoring.models import SETTING_THRESHOLDS, Alarm, AlarmRule
from pacs.models import Transfer
from project.tls import certificate_expiries


def _ts(value) -> float:
    return value.timestamp() if value else 0.0


class DatabaseCollector:
    """Reads every figure on ``collect()``; registered on a per-scrape registry."""

    def collect(self):
        now = timezone.now()

        inbound = CounterMetricFamily("pacs_hl7_inbound_messages", "HL7 messages received, by sender and ACK code sent",
                                      labels=["sender", "ack_code"])
        last_in = GaugeMetricFamily("pacs_hl7_inbound_last_message_timestamp_seconds",
                                    "time of the last HL7 message received from the sender", labels=["sender"])
        per_sender: dict[str, float] = {}
        for r in (selectors.admitted_inbound().values("sending_application", "sending_facility", "ack_code")
                  .annotate(n=Count("id"), last=Max("received_at"))):
            key = selectors.sender_key(r["sending_application"], r["sending_facility"])
            inbound.add_metric([key, r["ack_code"] or "none"], r["n"])
            per_sender[key] = max(per_sender.get(key, 0.0), _ts(r["last"]))
        for key, ts in sorted(per_sender.items()):
            last_in.add_metric([key], ts)
        yield inbound
        yield last_in
        # Refused by the sender policy: not the named sender's traffic, and without labels, so that
        # made-up MSH-3 values or addresses cannot multiply the series.
        refused = CounterMetricFamily("pacs_hl7_inbound_refused_messages",
                                      "HL7 messages refused by the sender policy (undeclared sender, type not granted)")
        refused.add_metric([], selectors.inbound_refused_total())
        yield refused

        outbound = CounterMetricFamily("pacs_hl7_outbound_messages", "outbound HL7 messages queued (every kind), by destination and status",
                                       labels=["destination", "status"])
        for r in OutboundMessage.objects.values("destination__name", "status").annotate(n=Count("id")):
            outbound.add_metric([r["destination__name"], r["status"]], r["n"])
        yield outbound
        attempts = CounterMetricFamily("pacs_hl7_outbound_attempts",
                                       "ORU delivery attempts, by destination and outcome (ACK code or socket error)",
                                       labels=["destination", "outcome"])
        for r in OutboundAttempt.objects.values("message__destination__name", "outcome").annotate(n=Count("id")):
            attempts.add_metric([r["message__destination__name"], r["outcome"] or "none"], r["n"])
        yield attempts

        depth = GaugeMetricFamily("pacs_queue_depth", "items waiting, by interface", labels=["interface", "destination"])
        age = GaugeMetricFamily("pacs_queue_oldest_age_seconds", "age of the oldest waiting item (0: none)",
                                labels=["interface", "destination"])
        for row in selectors.outbound_interfaces(now):
            depth.add_metric(["hl7_out", row["key"]], row["queue_depth"])
            age.add_metric(["hl7_out", row["key"]], row["oldest_age_seconds"] or 0.0)
        for row in selectors.vna_interfaces(now):
            depth.add_metric(["vna", row["key"]], row["queue_depth"])
            age.add_metric(["vna", row["key"]], row["oldest_age_seconds"] or 0.0)
        # The audit trail not yet at each Audit Record Repository (records after its cursor).
        for key in selectors.audit_repositories():
            pending, oldest_age = selectors.audit_backlog(key, now)
            depth.add_metric(["audit", key], pending)
            age.add_metric(["audit", key], oldest_age or 0.0)
        yield depth
        yield age

        dicom = CounterMetricFamily("pacs_dicom_operations", "DIMSE operations answered, by calling AE, operation and status",
                                    labels=["calling_ae_title", "operation", "status"])
        for r in selectors.dicom_operation_totals():
            dicom.add_metric([r["calling_ae_title"], r["operation"], f"0x{r['status']:04X}"], r["n"])
        yield dicom
        refused = CounterMetricFamily("pacs_dicom_associations_refused",
                                      "DICOM associations refused by the association policy, by source address and reason",
                                      labels=["address", "reason"])
        for r in selectors.dicom_refusal_totals():
            refused.add_metric([r["address"], r["reason"]], r["n"])
        yield refused

        transfers = GaugeMetricFamily("pacs_vna_transfers", "VNA transfers, by destination and status",
                                      labels=["destination", "status"])
        for r in Transfer.objects.values("destination__name", "status").annotate(n=Count("id")):
            transfers.add_metric([r["destination__name"], r["status"]], r["n"])
        yield transfers

        unmatched, oldest = selectors.unmatched_summary(now)
        yield GaugeMetricFamily("pacs_unmatched_studies", "studies without an order", value=unmatched)
        yield GaugeMetricFamily("pacs_unmatched_study_oldest_age_seconds", "age of the oldest unmatched study (0: none)",
                                value=oldest or 0.0)

        # Hand-offs left dangling past their ALARM_..._MINUTES setting (the alarms' own figures),
        # per check and interface (AE title, destination or modality; never an accession).
        stuck = GaugeMetricFamily("pacs_dangling_items", "hand-offs stuck past their setting, by check and interface",
                                  labels=["check", "interface"])
        stuck_age = GaugeMetricFamily("pacs_dangling_oldest_age_seconds",
                                      "age of the oldest hand-off stuck past its setting, by check and interface",
                                      labels=["check", "interface"])
        for kind in SETTING_THRESHOLDS:
            per_key: dict[str, list[float]] = {}
            counts: dict[str, int] = {}
            for item in services.dangling(kind, now):
                per_key.setdefault(item["key"], []).append(item["age_seconds"] or 0.0)
                # A silent modality counts the steps due for it; the other checks, their items.
                counts[item["key"]] = counts.get(item["key"], 0) + item.get("steps", 1)
            for key, ages in sorted(per_key.items()):
                stuck.add_metric([kind, key], counts[key])
                stuck_age.add_metric([kind, key], max(ages))
        yield stuck
        yield stuck_age

        open_alarms = GaugeMetricFamily("pacs_alarm_open", "1 while an alarm of the rule is open for the interface",
                                        labels=["rule", "kind", "interface"])
        opened_by_rule: dict[int, int] = {}
        for alarm in Alarm.objects.filter(cleared_at__isnull=True).select_related("rule"):
            open_alarms.add_metric([alarm.rule.name, alarm.rule.kind, alarm.interface_key], 1)
            opened_by_rule[alarm.rule_id] = opened_by_rule.get(alarm.rule_id, 0) + 1
        yield open_alarms
        rules = GaugeMetricFamily("pacs_alarm_rule_open_alarms", "open alarms per enabled rule", labels=["rule", "kind"])
        for rule in AlarmRule.objects.filter(enabled=True):
            rules.add_metric([rule.name, rule.kind], opened_by_rule.get(rule.pk, 0))
        yield rules

        # Read from the files at each scrape (a few small PEM files); an unreadable file has no
        # series, and the certificate_expiry alarm names it.
        expiry = GaugeMetricFamily("pacs_tls_certificate_expiry_seconds",
                                   "seconds until the configured certificate expires (negative: expired)",
                                   labels=["setting", "subject"])
        for cert in certificate_expiries():
            if cert.not_after is not None:
                expiry.add_metric([cert.setting, cert.subject], cert.seconds_left(now))
        yield expiry


def render() -> bytes:
    """The text exposition of every metric, read now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())
    return generate_latest(registry)
