"""Alarm evaluation: open an ``Alarm`` when a rule's condition holds, clear it when
it stops, and notify each opening and each clearing exactly once.

``evaluate(now=None)`` is run by the beat task ``monitoring.evaluate_alarms`` every
``ALARM_CHECK_SECONDS``.  For each enabled rule it computes, per interface key, whether the
condition holds (``conditions``), from the same figures as the console and /metrics
(``monitoring.selectors``).  The hand-off kinds (``SETTING_THRESHOLDS``: a silent modality, an
unanswered storage commitment, an unread STAT study, a final report without ORU) take their
limit from a setting, so the console and /metrics list the same items (``dangling``).  Outside a rule's schedule no alarm is opened (nights and
weekends page no one); an open alarm is still cleared when its condition stops.

Exactly once: at most one open alarm per (rule, interface key) (a partial unique index), and
a notification is sent by whoever first sets ``open_notified_at`` / ``clear_notified_at``
with a conditional UPDATE, so concurrent checks never notify twice.  A notification that
fails (SMTP or webhook down) is logged and not retried; the alarm stays recorded with its
times either way.  Messages name interfaces and counts only, never patients.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import urllib.request
from dataclasses import dataclass

from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from monitoring import selectors
from monitoring.models import (
    AUDIT_BACKLOG,
    CERTIFICATE_EXPIRY,
    COMMITMENT_UNANSWERED,
    DICOM_REFUSED,
    ERROR_RATE,
    HL7_REFUSED,
    INBOUND_SILENCE,
    MODALITY_SILENT,
    ORU_UNDELIVERED,
    OUTBOUND_BACKLOG,
    SETTING_THRESHOLDS,
    STAT_UNREAD,
    TRANSFER_FAILED,
    UNMATCHED_STUDY,
    Alarm,
    AlarmRule,
)
from project.tls import certificate_expiries

log = logging.getLogger("monitoring.alarms")


@dataclass(frozen=True)
class Condition:
    holds: bool
    value: float | None
    message: str


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 60.0, 1)


def is_active(rule: AlarmRule, now: dt.datetime) -> bool:
    """Whether the rule's schedule covers ``now`` (weekday and hour in the department's TIME_ZONE)."""
    local = timezone.localtime(now)
    if rule.schedule_weekdays and str(local.weekday()) not in rule.schedule_weekdays:
        return False
    start = rule.schedule_start_hour if rule.schedule_start_hour is not None else 0
    end = rule.schedule_end_hour if rule.schedule_end_hour is not None else 24
    if start <= end:
        return start <= local.hour < end
    return local.hour >= start or local.hour < end  # overnight window, e.g. 22-6


def _error_keys() -> list[str]:
    return ([f"hl7:{k}" for k in selectors.inbound_senders()] + [f"oru:{k}" for k in selectors.outbound_destinations()]
            + [f"dicom:{k}" for k in selectors.dicom_calling_aes()])


def setting_threshold(kind: str) -> int:
    """The limit in minutes of a kind whose threshold is a setting (``SETTING_THRESHOLDS``)."""
    return int(getattr(settings, SETTING_THRESHOLDS[kind]))


def dangling(kind: str, now: dt.datetime, key: str = "", *, limit: int = 10000) -> list[dict]:
    """The items of a hand-off check stuck past its setting (``monitoring.selectors``), for the
    alarm, the console and /metrics alike; ``key`` narrows them to one interface."""
    minutes = setting_threshold(kind)
    if kind == MODALITY_SILENT:
        return selectors.silent_modalities(now, limit_minutes=minutes, ae_title=key)
    if kind == COMMITMENT_UNANSWERED:
        return selectors.unanswered_commitments(now, limit_minutes=minutes, destination=key)
    if kind == STAT_UNREAD:
        return selectors.unread_stat_studies(now, limit_minutes=minutes, modality=key, limit=limit)
    return selectors.undelivered_final_reports(now, limit_minutes=minutes, destination=key, limit=limit)


# What each hand-off check's alarm says (counts and interfaces only, no accession or patient).
_DANGLING_MESSAGE = {
    MODALITY_SILENT: "modality {key} sent nothing (C-STORE, MPPS, MWL query) while {n} step(s) were due "
                     "for it; first due {age:.0f} min ago (limit {limit})",
    COMMITMENT_UNANSWERED: "{n} storage commitment request(s) to {key} not answered, oldest asking for "
                           "{age:.0f} min (limit {limit})",
    STAT_UNREAD: "{n} STAT stud(ies) ({key}) without a final report, longest ready for {age:.0f} min "
                 "(limit {limit})",
    ORU_UNDELIVERED: "{n} final report(s) not acknowledged by {key}, oldest signed {age:.0f} min ago "
                     "(limit {limit})",
}


def _dangling_conditions(rule: AlarmRule, now: dt.datetime) -> dict[str, Condition]:
    """One alarm per interface key with an item stuck past the kind's setting; a key with none
    is absent (so its open alarm clears)."""
    limit = setting_threshold(rule.kind)
    by_key: dict[str, list[dict]] = {}
    for item in dangling(rule.kind, now, rule.interface_key):
        by_key.setdefault(item["key"], []).append(item)
    out = {}
    for key, items in by_key.items():
        age = _minutes(max(i["age_seconds"] or 0.0 for i in items)) or 0.0
        n = items[0]["steps"] if rule.kind == MODALITY_SILENT else len(items)
        out[key] = Condition(True, age, _DANGLING_MESSAGE[rule.kind].format(key=key or "-", n=n, age=age,
                                                                            limit=limit))
    return out


def conditions(rule: AlarmRule, now: dt.datetime) -> dict[str, Condition]:
    """{interface key: Condition} of a rule at ``now``."""
    out: dict[str, Condition] = {}
    limit = rule.threshold_minutes
    if rule.kind in SETTING_THRESHOLDS:
        return _dangling_conditions(rule, now)
    if rule.kind == INBOUND_SILENCE:
        for key in [rule.interface_key] if rule.interface_key else selectors.inbound_senders():
            last = selectors.inbound_last_message_at(key) or rule.created_at
            quiet = _minutes((now - last).total_seconds())
            out[key] = Condition(quiet > limit, quiet, f"no HL7 message from {key} for {quiet:.0f} min (limit {limit})")
    elif rule.kind == OUTBOUND_BACKLOG:
        for key in [rule.interface_key] if rule.interface_key else selectors.outbound_destinations():
            depth, age = selectors.outbound_backlog(key, now)
            age_min = _minutes(age) or 0.0
            out[key] = Condition(age_min > limit, age_min,
                                 f"{depth} outbound HL7 message(s) to {key} undelivered, oldest {age_min:.0f} min (limit {limit})")
    elif rule.kind == AUDIT_BACKLOG:
        # Like the outbound HL7 backlog: the age of the oldest record the repository does not have yet.
        for key in [rule.interface_key] if rule.interface_key else selectors.audit_repositories():
            depth, age = selectors.audit_backlog(key, now)
            age_min = _minutes(age) or 0.0
            out[key] = Condition(age_min > limit, age_min,
                                 f"{depth} audit record(s) not yet at the Audit Record Repository {key}, "
                                 f"oldest {age_min:.0f} min (limit {limit})")
    elif rule.kind == ERROR_RATE:
        since = now - dt.timedelta(minutes=limit)
        threshold = rule.threshold_rate if rule.threshold_rate is not None else 0.0
        for key in [rule.interface_key] if rule.interface_key else _error_keys():
            kind, _, name = key.partition(":")
            counter = {"hl7": selectors.inbound_error_counts, "oru": selectors.outbound_error_counts,
                       "dicom": selectors.dicom_error_counts}.get(kind)
            if counter is None:
                continue
            errors, total = counter(name, since)
            rate = errors / total if total else 0.0
            out[key] = Condition(total >= max(rule.min_count, 1) and rate > threshold, round(rate, 4),
                                 f"{errors} of {total} operation(s) on {key} failed in {limit} min "
                                 f"({rate:.0%}, limit {threshold:.0%})")
    elif rule.kind == UNMATCHED_STUDY:
        studies = [s for s in selectors.unmatched_studies(now, calling_ae_title=rule.interface_key, limit=10000)
                   if (s["age_seconds"] or 0) > limit * 60]
        keys = {rule.interface_key} if rule.interface_key else {s["calling_ae_title"] for s in studies}
        for key in keys:
            mine = [s for s in studies if s["calling_ae_title"] == key or rule.interface_key]
            oldest = _minutes(max((s["age_seconds"] for s in mine), default=0.0))
            out[key] = Condition(bool(mine), oldest,
                                 f"{len(mine)} unmatched stud(ies) from {key or 'any AE'} older than {limit} min "
                                 f"(oldest {oldest:.0f} min)")
    elif rule.kind == TRANSFER_FAILED:
        failed = selectors.failed_transfers(rule.interface_key, limit=10000)
        keys = {rule.interface_key} if rule.interface_key else {t["destination"] for t in failed}
        for key in keys:
            mine = [t for t in failed if t["destination"] == key]
            reason = mine[-1]["reason"][:200] if mine else ""
            out[key] = Condition(bool(mine), float(len(mine)),
                                 f"{len(mine)} VNA transfer(s) to {key} failed" + (f"; last: {reason}" if reason else ""))
    elif rule.kind == DICOM_REFUSED:
        # One alarm per source address; it clears after N minutes without a refusal, so an address
        # refused again and again is notified once, and at most once per N minutes.
        refused = selectors.dicom_refusals(now - dt.timedelta(minutes=limit), address=rule.interface_key)
        for address, r in refused.items():
            out[address] = Condition(r["count"] >= max(rule.min_count, 1), float(r["count"]),
                                     f"{r['count']} DICOM association(s) refused from {address} "
                                     f"({r['reason']}, last calling AE {r['calling_ae_title'] or '-'})")
    elif rule.kind == HL7_REFUSED:
        refused = selectors.inbound_refusals(now - dt.timedelta(minutes=limit), rule.interface_key)
        for key in {rule.interface_key} if rule.interface_key else set(refused):
            seen = refused.get(key)
            count = seen["count"] if seen else 0
            detail = f"; last: {seen['sender']} {seen['message_type']}: {seen['reason']}"[:300] if seen else ""
            out[key] = Condition(count >= max(rule.min_count, 1), float(count),
                                 f"{count} HL7 message(s) from {key} refused in {limit} min{detail}")
    elif rule.kind == CERTIFICATE_EXPIRY:
        # One alarm per certificate (a CA bundle holds several), keyed by setting and subject; it
        # clears when the file holds a renewed certificate.  The threshold is TLS_EXPIRY_WARNING_DAYS.
        for expiry in certificate_expiries():
            if rule.interface_key and expiry.setting != rule.interface_key:
                continue
            left = expiry.seconds_left(now)
            key = f"{expiry.setting} {expiry.subject}".strip()[:200]
            out[key] = Condition(expiry.is_due(now), None if left is None else round(left / 86400, 1),
                                 expiry.describe(now))
    return out


def evaluate(now: dt.datetime | None = None) -> dict[str, int]:
    """Check every enabled rule; open and clear alarms; notify.  Returns counts (opened, cleared, open)."""
    now = now or timezone.now()
    summary = {"opened": 0, "cleared": 0, "open": 0}
    for rule in AlarmRule.objects.filter(enabled=True):
        try:
            found = conditions(rule, now)
        except Exception:  # noqa: BLE001 - one broken rule does not stop the others
            log.exception("alarm rule could not be evaluated", extra={"rule": rule.name})
            continue
        active = is_active(rule, now)
        open_alarms = {a.interface_key: a for a in Alarm.objects.filter(rule=rule, cleared_at__isnull=True)}
        for key, cond in found.items():
            alarm = open_alarms.get(key)
            if cond.holds and alarm is None and active:
                alarm = _open(rule, key, cond, now)
                if alarm is not None:
                    summary["opened"] += 1
                    open_alarms[key] = alarm
            elif alarm is not None and cond.holds:
                Alarm.objects.filter(pk=alarm.pk).update(last_checked_at=now, last_value=cond.value)
        for key, alarm in open_alarms.items():
            cond = found.get(key)
            if cond is None or not cond.holds:
                if _clear(alarm, cond, now):
                    summary["cleared"] += 1
    summary["open"] = Alarm.objects.filter(cleared_at__isnull=True).count()
    return summary


def _open(rule: AlarmRule, key: str, cond: Condition, now: dt.datetime) -> Alarm | None:
    try:
        with transaction.atomic():
            alarm = Alarm.objects.create(rule=rule, interface_key=key, opened_at=now, last_checked_at=now,
                                         last_value=cond.value, message=cond.message[:500])
    except IntegrityError:
        return None  # another check opened it first
    log.warning("alarm opened", extra={"rule": rule.name, "kind": rule.kind, "interface": key, "alarm": alarm.pk})
    if Alarm.objects.filter(pk=alarm.pk, open_notified_at__isnull=True).update(open_notified_at=timezone.now()):
        notify(alarm, "open")
    return alarm


def _clear(alarm: Alarm, cond: Condition | None, now: dt.datetime) -> bool:
    updated = Alarm.objects.filter(pk=alarm.pk, cleared_at__isnull=True).update(
        cleared_at=now, last_checked_at=now, last_value=cond.value if cond else None)
    if not updated:
        return False
    alarm.refresh_from_db()
    log.info("alarm cleared", extra={"rule": alarm.rule.name, "interface": alarm.interface_key, "alarm": alarm.pk})
    if Alarm.objects.filter(pk=alarm.pk, clear_notified_at__isnull=True).update(clear_notified_at=timezone.now()):
        notify(alarm, "clear")
    return True


def payload(alarm: Alarm, event: str) -> dict:
    """The webhook body (also the e-mail's content): interface, times and counts; no patient data."""
    rule = alarm.rule
    return {
        "event": event, "alarm_id": alarm.pk, "rule": rule.name, "kind": rule.kind, "interface": alarm.interface_key,
        "opened_at": alarm.opened_at.isoformat(), "cleared_at": alarm.cleared_at.isoformat() if alarm.cleared_at else None,
        "value": alarm.last_value, "message": alarm.message, "source": settings.ALARM_SOURCE_NAME,
    }


def notify(alarm: Alarm, event: str) -> None:
    """One e-mail to the rule's addresses and one POST to its webhook; a failure of one is logged
    and does not stop the other."""
    rule = alarm.rule
    body = payload(alarm, event)
    word = "OPEN" if event == "open" else "CLEARED"
    if rule.email_list:
        try:
            send_mail(
                f"{settings.ALARM_EMAIL_SUBJECT_PREFIX}{word}: {rule.name} {alarm.interface_key}".strip(),
                json.dumps(body, indent=2), settings.ALARM_EMAIL_FROM, rule.email_list, fail_silently=False)
        except Exception as exc:  # noqa: BLE001 - logged; the webhook is still tried
            log.error("alarm e-mail failed", extra={"alarm": alarm.pk, "event": event, "error": str(exc)[:200]})
    if rule.webhook_url:
        try:
            post_webhook(rule.webhook_url, body)
        except Exception as exc:  # noqa: BLE001 - logged; other rules' notifications go on
            log.error("alarm webhook failed", extra={"alarm": alarm.pk, "event": event, "error": str(exc)[:200]})


def post_webhook(url: str, body: dict) -> int:
    """POST ``body`` as JSON; raises on a connection error, a timeout or a non-2xx answer."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "pacs-alarms"})
    with urllib.request.urlopen(request, timeout=settings.ALARM_WEBHOOK_TIMEOUT_SECONDS) as response:  # noqa: S310
        return response.status
