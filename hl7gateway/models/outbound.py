"""The outbound HL7 queue: destinations, one row per message and destination, every delivery
attempt as a row, and the operator's retry / cancel actions.

Four kinds of message share the queue, its order and its delivery:

* ``ORU``: the ORU^R01 of a signed report version (HL7 v2.5.1 chapter 7; IHE RAD-28/RAD-128),
  one row per (report version, destination), written in the signing transaction
  (``hl7gateway.outbox.enqueue.enqueue_oru``);
* ``STATUS``: an order status message to the order placer (IHE RAD-3 Filler Order Management:
  ORM^O01 in v2.3.1, OMI^O23 in v2.5.1, ORC-1 ``SC``), one row per (requested procedure, status
  event, destination), written in the transaction of the change that causes it
  (``hl7gateway.outbox.enqueue.enqueue_status``); the same kind carries, with the event
  ``filler-order``, an order the department created itself to the order placer (ORC-1 SN),
  whose answer (ORC-1 NA) assigns the placer order number stored on the order;
* ``CHARGE``: a charge posted to billing (IHE RAD-35 Charge Posted: DFT^P03, HL7 v2.5.1 chapter
  6), one row per (requested procedure, charge kind, FT1-6 transaction type, destination): the
  technical or professional charge (``CG``) once, and its credit (``CD``) once, written in the
  transaction of the change that causes it (``hl7gateway.outbox.enqueue.enqueue_charge``);
* ``ADT``: a patient change forwarded to a VNA that takes HL7 (IHE RAD-12 Patient Update:
  ADT^A08 or ADT^A40, HL7 v2.5.1 chapter 3), one row per change and VNA holding studies of the
  patient, written in the A08 / A40 transaction (``hl7gateway.outbox.enqueue.enqueue_patient_update``).

A row is written with its message already rendered and its MSH-10 fixed, so that every resend
is the same bytes.
``status`` moves only through ``ris.services.transitions.transition`` (table
``oru_outbound`` in ``ris.states``):

    PENDING --AA--> DELIVERED
    PENDING --AR, or AE / worker lost more than the attempt cap--> FAILED
    PENDING / FAILED --operator cancel--> CANCELED
    FAILED --operator retry--> PENDING

"Being sent right now" is not a status but a lease (``leased_until``): a worker claims a
due row by a conditional UPDATE, and a worker that dies mid-send leaves a lease that
simply expires, after which the sweep re-queues the row: no message is lost with a worker,
and none is sent by two workers at once.
"""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, register
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from hl7gateway import order_status

PENDING = "PENDING"
DELIVERED = "DELIVERED"
FAILED = "FAILED"
CANCELED = "CANCELED"
STATUSES = (PENDING, DELIVERED, FAILED, CANCELED)
#: A row in one of these no longer holds back later rows of the same patient and destination.
SETTLED = (DELIVERED, CANCELED)
# Allowed status changes: ris.states.TABLES["oru_outbound"].

#: ``OutboundMessage.kind``: a result, an order status message (or a filler order) to the order
#: placer, a charge to billing, a patient update to the archive.
ORU = "ORU"
STATUS = "STATUS"
CHARGE = "CHARGE"
ADT = "ADT"
KIND_CHOICES = [(ORU, "Result (ORU^R01)"), (STATUS, "Order status (ORM^O01 / OMI^O23)"),
                (CHARGE, "Charge (DFT^P03)"), (ADT, "Patient update to the archive (ADT^A08 / ADT^A40)")]
#: Name prefix of the destinations that are a VNA's HL7 ADT receiver (``vna-<VNA destination key>``).
ARCHIVE_PREFIX = "vna-"


class OutboundDestination(models.Model):
    """A system that receives our HL7 messages over MLLP (billing, the EHR ...).

    Rows come from the admin or from ``HL7_ORU_DESTINATIONS`` (``declared_in_environment``:
    host and port are then taken from the environment at every sync; the other fields stay
    editable in the admin).  ``sends_results`` and ``sends_order_status`` choose the kinds of
    message it takes: results only unless told otherwise, as before order status existed;
    ``sends_charges`` (DFT^P03, IHE RAD-35) and ``sends_filler_orders`` (the orders the department
    creates, ORC-1 SN) are off unless turned on.
    """

    VERSION_DEFAULT = ""
    VERSION_CHOICES = [("", "setting HL7_ORU_VERSION"), ("2.5.1", "2.5.1"), ("2.3.1", "2.3.1")]
    TEXT_TYPE_CHOICES = [("TX", "TX (text)"), ("FT", "FT (formatted text)")]

    name = models.SlugField(max_length=64, unique=True, help_text="e.g. billing, ehr")
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField(validators=[MinValueValidator(1), MaxValueValidator(65535)])
    tls = models.BooleanField(default=False, verbose_name="MLLP over TLS",
                              help_text="mllps://: the destination's certificate is verified against "
                                        "TLS_CA_CERTIFICATES and its host name checked; never falls back to clear text")
    hl7_version = models.CharField(max_length=8, blank=True, choices=VERSION_CHOICES, default=VERSION_DEFAULT,
                                   help_text="MSH-12; empty = the setting HL7_ORU_VERSION")
    receiving_application = models.CharField(max_length=180, blank=True, help_text="MSH-5")
    receiving_facility = models.CharField(max_length=180, blank=True, help_text="MSH-6")
    text_value_type = models.CharField(max_length=2, choices=TEXT_TYPE_CHOICES, default="TX",
                                       help_text="OBX-2 of the report text lines")
    ack_timeout_seconds = models.FloatField(null=True, blank=True,
                                            help_text="seconds to wait for the ACK; empty = HL7_ORU_ACK_TIMEOUT_SECONDS")
    sends_results = models.BooleanField(default=True, verbose_name="results (ORU^R01)",
                                        help_text="the signed reports (HL7 v2.5.1 chapter 7, IHE RAD-28/RAD-128)")
    sends_order_status = models.BooleanField(
        default=False, verbose_name="order status (ORM^O01 / OMI^O23)",
        help_text="ORC-1 SC with ORC-5 IP, CM or DC when the exam starts, is complete, is discontinued, "
                  "and when the report is final (IHE RAD-3); ORM^O01 in v2.3.1, OMI^O23 in v2.5.1")
    sends_filler_orders = models.BooleanField(
        default=False, verbose_name="filler orders (ORM^O01 / OMI^O23 SN)",
        help_text="an order the department created (reconciliation, encounter-based imaging) as ORC-1 SN; the "
                  "placer order number of the answer (ORR^O02 / ORG^O20, ORC-1 NA) is stored on the order")
    sends_charges = models.BooleanField(
        default=False, verbose_name="charges (DFT^P03)",
        help_text="the technical charge when the exam is complete, the professional charge when the report is "
                  "final, the credit when the order is cancelled after a charge (IHE RAD-35, HL7 chapter 6)")
    sends_patient_updates = models.BooleanField(
        default=False, editable=False, verbose_name="patient updates to the archive (ADT^A08 / ADT^A40)",
        help_text="the HL7 ADT receiver of a VNA destination (its ADT host and port, or ?adt= in VNA_DESTINATIONS), "
                  "kept in step with it: A08 and A40 of patients whose studies are in that VNA")
    link_viewer = models.BooleanField(default=False, verbose_name="ORU: image viewer link",
                                      help_text="an OBX of value type RP with the study's viewer URL "
                                                "(VIEWER_URL_TEMPLATE)")
    link_wado_rs = models.BooleanField(default=False, verbose_name="ORU: WADO-RS link",
                                       help_text="an OBX of value type RP with the study's WADO-RS URL "
                                                 "(WADO_RS_BASE_URL/studies/{StudyInstanceUID})")
    report_pdf = models.BooleanField(default=False, verbose_name="ORU: report as PDF",
                                     help_text="an OBX of value type ED with the report as a PDF, base64 "
                                               "(HL7 v2.5.1 2A.24)")
    validate_messages = models.BooleanField(
        default=False, verbose_name="validate before sending",
        help_text="each message is checked against its HL7 version and message structure (hl7apy) before it is "
                  "sent; one that fails is not sent but FAILED with the findings")
    enabled = models.BooleanField(default=True, help_text="disabled: no new messages are queued for it")
    drain_requested_at = models.DateTimeField(null=True, blank=True, editable=False,
                                              help_text="a drain task for it is queued since (coalesced wake-ups)")
    declared_in_environment = models.BooleanField(default=False, editable=False,
                                                  help_text="declared by HL7_ORU_DESTINATIONS")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.url})"

    @property
    def url(self) -> str:
        return f"{'mllps' if self.tls else 'mllp'}://{self.host}:{self.port}"

    @property
    def version(self) -> str:
        return self.hl7_version or settings.HL7_ORU_VERSION

    @property
    def ack_timeout(self) -> float:
        return self.ack_timeout_seconds or settings.HL7_ORU_ACK_TIMEOUT_SECONDS


class OutboundMessage(models.Model):
    """One message for one destination: the outbox row (see the module docstring)."""

    STATUS_CHOICES = [(s, s.title()) for s in STATUSES]

    destination = models.ForeignKey(OutboundDestination, on_delete=models.PROTECT, related_name="messages")
    kind = models.CharField(max_length=8, choices=KIND_CHOICES, default=ORU)
    message_type = models.CharField(max_length=20, default="ORU^R01", help_text="MSH-9 as sent (message^event)")
    report_version = models.ForeignKey("ris.ReportVersion", on_delete=models.PROTECT, related_name="outbound_messages",
                                       null=True, blank=True, help_text="the signed version an ORU^R01 carries")
    requested_procedure = models.ForeignKey("ris.RequestedProcedure", on_delete=models.PROTECT, related_name="+",
                                            null=True, blank=True, help_text="the order the message is about")
    status_event = models.CharField(max_length=16, blank=True,
                                    help_text="order status message: the change that caused it (once per procedure)")
    order_status = models.CharField(max_length=2, blank=True, help_text="ORC-5 as sent (order status message)")
    placer_order_number = models.CharField(
        max_length=130, blank=True,
        help_text="filler order (ORC-1 SN): ORC-2 of the placer's answer (number^namespace), stored on the order")
    charge_kind = models.CharField(max_length=16, blank=True, help_text="charge: technical or professional")
    transaction_type = models.CharField(max_length=2, blank=True, help_text="charge: FT1-6 as sent, CG or CD")
    transaction_id = models.CharField(max_length=12, blank=True,
                                      help_text="charge: FT1-2 as sent (the same for the charge and its credit)")
    # The ordering key: messages of one patient to one destination leave in creation order.
    patient = models.ForeignKey("ris.Patient", on_delete=models.PROTECT, related_name="+")
    patient_id_text = models.CharField(max_length=200, blank=True, help_text="PID-3 as sent (for the operator)")
    accession_number = models.CharField(max_length=16, blank=True, help_text="OBR-18 as sent")
    result_status = models.CharField(max_length=1, blank=True, help_text="OBR-25 as sent: P, F or C")
    message_control_id = models.CharField(max_length=20, unique=True, null=True, help_text="MSH-10, never changes")
    hl7_version = models.CharField(max_length=8, help_text="MSH-12 as sent")
    payload = models.BinaryField(help_text="the message bytes (UTF-8), without MLLP framing")
    status = models.CharField(max_length=10, choices=STATUS_CHOICES, default=PENDING)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    next_attempt_at = models.DateTimeField(help_text="not sent before this time")
    dispatched_at = models.DateTimeField(null=True, blank=True,
                                         help_text="when the last delivery task was due to run (for the sweep)")
    leased_until = models.DateTimeField(null=True, blank=True, help_text="a worker is sending it until then")
    attempt_count = models.PositiveIntegerField(default=0, help_text="attempts so far (= the last attempt's number)")
    attempt_floor = models.PositiveIntegerField(default=0, help_text="attempt_count at the last operator retry")
    last_outcome = models.CharField(max_length=20, blank=True)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    ack = models.BinaryField(null=True, blank=True, help_text="the ACK that failed it (AR/AE); each attempt keeps its own")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["report_version", "destination"], name="uniq_oru_per_version_destination"),
            # One status message per procedure, event and destination (a re-opened study that
            # completes again, a second discontinued step, tell the placer nothing new).
            models.UniqueConstraint(fields=["requested_procedure", "status_event", "destination"],
                                    condition=Q(kind=STATUS), name="uniq_status_per_event_destination"),
            # A charge is posted once, and credited once (IHE RAD-35; FT1-6 CG / CD).
            models.UniqueConstraint(fields=["requested_procedure", "charge_kind", "transaction_type", "destination"],
                                    condition=Q(kind=CHARGE), name="uniq_charge_per_kind_type_destination"),
            models.CheckConstraint(condition=Q(kind__in=[STATUS, CHARGE, ADT]) | Q(report_version__isnull=False),
                                   name="oru_names_its_report_version"),
        ]
        indexes = [
            # The head-of-line check and "next in line" lookups.
            models.Index(fields=["destination", "patient", "id"], name="oru_out_chain_idx",
                         condition=Q(status__in=[PENDING, FAILED])),
            # The sweep and the operator page (undelivered rows by due time / age).
            models.Index(fields=["status", "next_attempt_at"], name="oru_out_due_idx"),
            models.Index(fields=["destination", "status", "created_at"], name="oru_out_dest_status_idx"),
        ]
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.message_type} {self.message_control_id} -> {self.destination_id} {self.status}"

    @property
    def order_control(self) -> str:
        """ORC-1 as sent by an order status message: SN for a filler order, else SC; "" for others."""
        if self.kind != STATUS:
            return ""
        return order_status.order_control(self.status_event)

    @property
    def text(self) -> str:
        return bytes(self.payload).decode("utf-8", errors="replace")

    @property
    def ack_text(self) -> str:
        return bytes(self.ack).decode("utf-8", errors="replace") if self.ack else ""


class OutboundAttempt(models.Model):
    """One try to deliver a message, written with its outcome (a batch's attempts in one INSERT).

    The attempt number is counted on the message when a worker claims it; if the worker dies
    before recording, the next claim writes the attempt as INTERRUPTED.

    ``outcome`` is one of hl7gateway.client's outcomes (AA, AE, AR, TIMEOUT, CONNECT_ERROR,
    CONNECTION_LOST, BAD_ACK), or INTERRUPTED when the worker died before finishing it.
    """

    INTERRUPTED = "INTERRUPTED"

    message = models.ForeignKey(OutboundMessage, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=20, blank=True)
    detail = models.TextField(blank=True, help_text="MSA-3/ERR text or the socket error")
    ack = models.BinaryField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True, help_text="host and process that tried")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["message", "number"], name="uniq_oru_attempt_number")]
        ordering = ["message", "number"]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.message_id}: {self.outcome}"

    @property
    def ack_text(self) -> str:
        return bytes(self.ack).decode("utf-8", errors="replace").replace("\r", "\n") if self.ack else ""


class OutboundAction(models.Model):
    """An operator's retry or cancel of an outbound message: who, when, why."""

    RETRY = "RETRY"
    CANCEL = "CANCEL"
    ACTION_CHOICES = [(RETRY, "Retry"), (CANCEL, "Cancel")]

    message = models.ForeignKey(OutboundMessage, on_delete=models.CASCADE, related_name="actions")
    action = models.CharField(max_length=10, choices=ACTION_CHOICES)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    username = models.CharField(max_length=150, help_text="kept if the account is deleted")
    reason = models.CharField(max_length=500, blank=True)
    from_status = models.CharField(max_length=10)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-at", "-pk"]

    def __str__(self) -> str:
        return f"{self.action} of {self.message_id} by {self.username}"


@register(Tags.compatibility)
def check_oru_destinations(app_configs, **kwargs):
    """hl7gateway.E101: HL7_ORU_DESTINATIONS cannot be parsed (the destinations are then ignored)."""
    # Here, not at the top: the outbox's destinations module imports this models module.
    from hl7gateway.outbox.destinations import parse_destinations

    try:
        parse_destinations(settings.HL7_ORU_DESTINATIONS)
    except ValueError as exc:
        return [
            Error(
                f"HL7_ORU_DESTINATIONS: {exc}.",
                hint="name=mllp://host:port[?version=2.3.1&application=APP&facility=FAC],... (see .env.example)",
                id="hl7gateway.E101",
            )
        ]
    return []
