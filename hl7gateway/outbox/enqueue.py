"""Queueing outbound messages, in the transaction of the change that causes them:

* ``enqueue_oru``: the ORU^R01 of a signed report (HL7 v2.5.1 chapter 7; IHE Radiology RAD-28 /
  RAD-128), one row per enabled destination that takes results;
* ``enqueue_status``: an order status message to the order placer (IHE RAD-3; ORM^O01 in v2.3.1,
  OMI^O23 in v2.5.1), one row per enabled destination that takes order status; with the event
  ``filler-order``, an order the department created (ORC-1 SN), one row per enabled destination
  that takes filler orders;
* ``enqueue_charge`` / ``enqueue_credits``: a charge posted to billing (IHE RAD-35, DFT^P03,
  HL7 v2.5.1 chapter 6) and the credit that reverses it, one row per enabled destination that
  takes charges;
* ``enqueue_patient_update``: an A08 or A40 forwarded to the VNAs that hold studies of the patient
  and take HL7 ADT (IHE RAD-12; ADT^A08 / ADT^A40, HL7 v2.5.1 chapter 3), one row per such VNA.

Every kind goes to the same queue, in the same per-patient order, by the same delivery."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from hl7gateway import charges, order_status, oru, patient_updates
from hl7gateway.models.outbound import (
    ADT,
    ARCHIVE_PREFIX,
    CANCELED,
    CHARGE,
    STATUS,
    OutboundDestination,
    OutboundMessage,
)
from hl7gateway.outbox import publish
from hl7gateway.outbox.content import (
    content_for_charge,
    content_for_patient_update,
    content_for_report_version,
    content_for_status,
    message_control_id,
)
from hl7gateway.outbox.destinations import sync_environment_destinations
from hl7gateway.outbox.rules import OutboxError
from ris.errors import UnknownKey
from ris.models import Patient, ReportVersion, RequestedProcedure

log = logging.getLogger("hl7gateway.outbox")


def enqueue_oru(report_version_id: int) -> int:
    """Queue one ORU^R01 of this signed report version per enabled destination.

    Call it inside the signing transaction: the rows commit (or roll back) with the
    signature, and the delivery tasks are published only after the commit.  Each row is
    rendered now, so every resend is the same bytes, MSH-10 and the PDF of a destination with
    ``report_pdf`` included.  Calling it
    again for the same version adds nothing (one row per version and destination).
    Returns the number of rows created.
    """
    with transaction.atomic():
        sync_environment_destinations()
        try:
            version = ReportVersion.objects.select_related(
                "report__requested_procedure__order__patient", "report__requested_procedure__order__visit",
                "signed_by",
            ).get(pk=report_version_id)
        except ReportVersion.DoesNotExist:
            raise UnknownKey(f"no report version {report_version_id}") from None
        if version.signed_at is None or version.result_status not in ("P", "F", "C"):
            raise OutboxError(f"report version {report_version_id} is not signed")
        already = set(OutboundMessage.objects.filter(report_version=version).values_list("destination_id", flat=True))
        destinations = [d for d in OutboundDestination.objects.filter(enabled=True, sends_results=True)
                        if d.pk not in already]
        if not destinations:
            if not already:
                log.warning("no enabled ORU destination: report not sent", extra={"report_version_id": version.pk})
            return 0
        content = content_for_report_version(version)
        # The report as a PDF, built once for every destination that asks (``pdf=1``); the
        # PDF library is loaded only then.
        pdf = report_pdf(content) if any(d.report_pdf for d in destinations) else b""
        rp = version.report.requested_procedure
        created = _queue_rows(
            destinations, content, timezone.now(), "ORU",
            fields=lambda dest: {"report_version": version, "requested_procedure_id": rp.pk,
                                 "patient_id": rp.order.patient_id, "accession_number": content.accession_number,
                                 "result_status": content.result_status},
            header_fields=lambda dest: {"text_value_type": dest.text_value_type, "link_viewer": dest.link_viewer,
                                        "link_wado_rs": dest.link_wado_rs},
            render=lambda dest, header: oru.render_oru(content, header, time_zone=settings.TIME_ZONE,
                                                       pdf=pdf if dest.report_pdf else b""),
        )
    log.info("ORU^R01 queued", extra={"report_version_id": report_version_id, "rows": created})
    return created


def report_pdf(content: oru.OruContent) -> bytes:
    """The report as a PDF (``hl7gateway.report_pdf``, imported here: only when a destination asks)."""
    from hl7gateway import report_pdf as pdf

    return pdf.render_pdf(content, time_zone=settings.TIME_ZONE, institution=settings.HL7_RECEIVING_FACILITY)


def enqueue_status(requested_procedure_id: int, event: str, *, at=None) -> int:
    """Queue the order status message of ``event`` (``hl7gateway.order_status``) for this
    requested procedure, one per enabled destination that takes order status (IHE RAD-3).

    Call it inside the transaction of the change: the rows commit (or roll back) with it, and
    the delivery tasks are published only after the commit.  Each event is sent once per
    procedure and destination: calling it again adds nothing.  ``at`` (ORC-9) is the time of
    the change, now by default.  Returns the number of rows created.

    ``order_status.FILLER_ORDER`` (the department created the order, ORC-1 SN) goes to the
    destinations that take filler orders instead (``sends_filler_orders``).
    """
    flag = "sends_filler_orders" if event == order_status.FILLER_ORDER else "sends_order_status"
    with transaction.atomic():
        sync_environment_destinations()
        destinations = list(OutboundDestination.objects.filter(enabled=True, **{flag: True}))
        if not destinations:
            return 0
        already = set(OutboundMessage.objects.filter(kind=STATUS, requested_procedure_id=requested_procedure_id,
                                                     status_event=event).values_list("destination_id", flat=True))
        destinations = [d for d in destinations if d.pk not in already]
        if not destinations:
            return 0
        try:
            rp = RequestedProcedure.objects.select_related("order__patient", "order__visit").get(
                pk=requested_procedure_id)
        except RequestedProcedure.DoesNotExist:
            raise UnknownKey(f"no requested procedure {requested_procedure_id}") from None
        now = timezone.now()
        content = content_for_status(rp, event, at or now)
        # First wins: a concurrent transaction that queued the same event first (two steps of
        # one procedure discontinued at once) keeps its row; this one sends nothing more.
        created = _queue_rows(
            destinations, content, now, "OSN" if event == order_status.FILLER_ORDER else "OSC",
            fields=lambda dest: {"kind": STATUS, "message_type": order_status.MESSAGE_TYPES[dest.version],
                                 "requested_procedure": rp, "status_event": event,
                                 "order_status": content.order_status, "result_status": content.result_status,
                                 "patient_id": rp.order.patient_id, "accession_number": content.accession_number},
            render=lambda dest, header: order_status.render_status(content, header, time_zone=settings.TIME_ZONE),
            first_wins=True,
        )
    log.info("order status queued", extra={"requested_procedure_id": requested_procedure_id, "event": event,
                                           "rows": created})
    return created


# --- charges (IHE RAD-35) -----------------------------------------------------------------------
def enqueue_charge(requested_procedure_id: int, kind: str) -> int:
    """Post the ``kind`` charge (``hl7gateway.charges``: technical at exam complete, professional
    at the final report) of this requested procedure: one DFT^P03 with FT1-6 ``CG`` per enabled
    destination that takes charges, if the procedure's code posts that kind (``CHARGE_POSTING``,
    ``CHARGE_POSTING_BY_CODE``) and the order is not cancelled (before or after the exam).

    Call it inside the transaction of the change: the rows commit (or roll back) with it.  A
    charge is posted once per procedure, kind and destination (a unique constraint): calling it
    again adds nothing.  Returns the number of rows created.
    """
    with transaction.atomic():
        sync_environment_destinations()
        destinations = list(OutboundDestination.objects.filter(enabled=True, sends_charges=True))
        if not destinations:
            return 0
        rp = _procedure(requested_procedure_id)
        if charges.cancelled(rp.status, rp.placer_status):
            return 0  # nothing to bill; a credit would only reverse it
        if kind not in charges.kinds_for(rp.procedure_code_value, settings.CHARGE_POSTING,
                                         settings.CHARGE_POSTING_BY_CODE):
            return 0
        already = set(OutboundMessage.objects.filter(
            kind=CHARGE, requested_procedure=rp, charge_kind=kind, transaction_type=charges.CHARGE,
        ).values_list("destination_id", flat=True))
        created = _charge_rows(rp, kind, charges.CHARGE, [d for d in destinations if d.pk not in already])
    log.info("charge queued", extra={"requested_procedure_id": requested_procedure_id, "charge_kind": kind,
                                     "rows": created})
    return created


def enqueue_credits(requested_procedure_id: int) -> int:
    """The order was cancelled: reverse every charge posted for this requested procedure with its
    credit (FT1-6 ``CD``, HL7 table 0017), once per charge and destination, carrying the charge's
    FT1-2.  A charge the operator cancelled was never posted and gets no credit.  Call it inside
    the transaction of the cancellation.  Returns the number of rows created."""
    with transaction.atomic():
        sync_environment_destinations()
        posted = OutboundMessage.objects.filter(
            kind=CHARGE, requested_procedure_id=requested_procedure_id, transaction_type=charges.CHARGE,
            destination__enabled=True, destination__sends_charges=True,
        ).exclude(status=CANCELED).select_related("destination")
        credited = set(OutboundMessage.objects.filter(
            kind=CHARGE, requested_procedure_id=requested_procedure_id, transaction_type=charges.CREDIT,
        ).values_list("charge_kind", "destination_id"))
        todo: dict[str, list[OutboundDestination]] = {}
        for row in posted:
            if (row.charge_kind, row.destination_id) not in credited:
                todo.setdefault(row.charge_kind, []).append(row.destination)
        if not todo:
            return 0
        rp = _procedure(requested_procedure_id)
        created = sum(_charge_rows(rp, kind, charges.CREDIT, dests) for kind, dests in sorted(todo.items()))
    log.info("charge credit queued", extra={"requested_procedure_id": requested_procedure_id, "rows": created})
    return created


def _procedure(requested_procedure_id: int) -> RequestedProcedure:
    try:
        return RequestedProcedure.objects.select_related("order__patient", "order__visit").get(
            pk=requested_procedure_id)
    except RequestedProcedure.DoesNotExist:
        raise UnknownKey(f"no requested procedure {requested_procedure_id}") from None


def _charge_rows(rp, kind: str, transaction_type: str, destinations: list[OutboundDestination]) -> int:
    """One DFT^P03 row per destination, rendered now with its fixed MSH-10; a concurrent
    transaction that posted the same charge first wins (the unique constraint, in a savepoint)."""
    if not destinations:
        return 0
    now = timezone.now()
    content = content_for_charge(rp, kind, transaction_type, now)
    return _queue_rows(
        destinations, content, now, "DFT",
        fields=lambda dest: {"kind": CHARGE, "message_type": "DFT^P03", "requested_procedure": rp,
                             "charge_kind": kind, "transaction_type": transaction_type,
                             "transaction_id": content.transaction_id, "patient_id": rp.order.patient_id,
                             "accession_number": rp.accession_number},
        render=lambda dest, header: charges.render_charge(content, header, time_zone=settings.TIME_ZONE),
        first_wins=True,
    )


# --- patient changes to the archive (IHE RAD-12) ------------------------------------------------
def archive_destinations(archives) -> list[OutboundDestination]:
    """The outbound destinations of these VNAs' HL7 ADT receivers (``project.delivery.signals.
    AdtArchive``), kept in step with the VNA destinations: created on first use as ``vna-<key>``
    (patient updates only), host, port and TLS updated when the VNA's changed; the other fields
    (MSH-5, MSH-6, the ACK timeout, enabled) stay the admin's."""
    rows = []
    for archive in archives:
        wanted = {"host": archive.host, "port": archive.port, "tls": archive.tls, "sends_patient_updates": True}
        row, created = OutboundDestination.objects.get_or_create(
            name=f"{ARCHIVE_PREFIX}{archive.key}",
            defaults={**wanted, "hl7_version": patient_updates.VERSION, "sends_results": False,
                      "sends_order_status": False, "sends_charges": False})
        if created:
            log.info("archive ADT destination created", extra={"destination": row.name})
        elif any(getattr(row, k) != v for k, v in wanted.items()):
            for k, v in wanted.items():
                setattr(row, k, v)
            row.save(update_fields=[*wanted, "updated_at"])
        rows.append(row)
    return rows


def enqueue_patient_update(patient_id: int, event: str, merge_id: int | None, archives) -> int:
    """Queue the ADT^A08 / ADT^A40 (``hl7gateway.patient_updates``) of this patient change to each
    of ``archives`` (the VNAs holding studies of the patient that take HL7 ADT) whose destination
    is enabled.

    Call it inside the A08 / A40 transaction: the rows commit (or roll back) with the change and
    leave in the patient's order with everything else queued for that destination.  Each call is
    one change: a second A08 is a second message.  Returns the number of rows created."""
    if event not in patient_updates.EVENTS:
        raise OutboxError(f"no patient update for event {event!r}")
    with transaction.atomic():
        destinations = [d for d in archive_destinations(archives) if d.enabled]
        if not destinations:
            return 0
        try:
            patient = Patient.objects.get(pk=patient_id)
        except Patient.DoesNotExist:
            raise UnknownKey(f"no patient {patient_id}") from None
        now = timezone.now()
        content = content_for_patient_update(patient, event, merge_id, now)
        _queue_rows(
            destinations, content, now, "ADT",
            fields=lambda dest: {"kind": ADT, "message_type": patient_updates.MESSAGE_TYPES[event].rsplit("^", 1)[0],
                                 "patient": patient},
            render=lambda dest, header: patient_updates.render_patient_update(content, header,
                                                                              time_zone=settings.TIME_ZONE),
            version=patient_updates.VERSION,
        )
    log.info("patient update queued for the archive", extra={"event": event, "rows": len(destinations)})
    return len(destinations)


# --- the rows, one per destination --------------------------------------------------------------
def _queue_rows(destinations: list[OutboundDestination], content, now, prefix: str, *,
                fields: Callable[[OutboundDestination], dict],
                render: Callable[[OutboundDestination, oru.MessageHeader], str],
                header_fields: Callable[[OutboundDestination], dict] | None = None,
                version: str | None = None, first_wins: bool = False) -> int:
    """One row per destination, rendered now with its fixed MSH-10 (``prefix`` and the row's key),
    so that every resend is the same bytes; the delivery tasks of ``destinations`` are published
    after the commit.

    ``fields`` gives the row's own columns, ``header_fields`` the destination's MSH and OBX choices
    beyond MSH-5 / MSH-6 / MSH-12, ``render`` the message; MSH-12 is ``version``, else the
    destination's.  With ``first_wins`` each row goes in a savepoint and a row a concurrent
    transaction queued first (a unique constraint) is skipped.  Returns the number of rows created.
    """
    patient_id_text = "~".join(oru.cx(i) for i in content.patient_identifiers)[:200]
    created = 0
    for dest in destinations:
        hl7_version = version or dest.version
        try:
            with transaction.atomic() if first_wins else contextlib.nullcontext():
                row = OutboundMessage.objects.create(
                    destination=dest,
                    patient_id_text=patient_id_text,
                    hl7_version=hl7_version,
                    payload=b"",
                    next_attempt_at=now,
                    dispatched_at=now,
                    **fields(dest),
                )
                row.message_control_id = message_control_id(row.pk, prefix)
                header = oru.MessageHeader(
                    message_control_id=row.message_control_id,
                    created_at=now,
                    sending_application=settings.HL7_RECEIVING_APPLICATION,
                    sending_facility=settings.HL7_RECEIVING_FACILITY,
                    receiving_application=dest.receiving_application,
                    receiving_facility=dest.receiving_facility,
                    version=hl7_version,
                    **(header_fields(dest) if header_fields else {}),
                )
                row.payload = oru.encode(render(dest, header))
                row.save(update_fields=["message_control_id", "payload"])
        except IntegrityError:
            if not first_wins:
                raise
            continue
        created += 1
    publish.wake_after_commit({d.pk for d in destinations})
    return created
