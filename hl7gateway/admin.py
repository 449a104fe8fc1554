"""Admin pages of the HL7 gateway: the inbound message log (operators search it by control ID,
sender, patient ID, accession number, type and status; raw message and ACK shown readable).
The outbox (every message we send: results, order status, filler orders, charges, patient
updates to the archive) registers its admin below."""

from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html

from hl7gateway.models import DeclaredSender, InboundMessage, InboundRefusal
from hl7gateway.parsing import CHARSETS
from ris.audited_admin import AuditedAdmin


def readable_hl7(data: bytes | memoryview | None, charset: str = "") -> str:
    """Bytes of a message as text, one segment a line (the charset it came in, else Latin-1)."""
    if data is None:
        return ""
    raw = bytes(data)
    codec = CHARSETS.get((charset or "").upper()) or "utf-8"
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    # make control characters visible instead of invisible
    return "".join(ch if ch in "\n\t" or ord(ch) >= 32 else f"<0x{ord(ch):02x}>" for ch in text)


@admin.register(InboundMessage)
class InboundMessageAdmin(AuditedAdmin, admin.ModelAdmin):
    # The class of the messages' <pre> (a stylesheet: the Content-Security-Policy allows no inline style).
    class Media:
        css = {"all": ["pacs/admin.css"]}

    list_display = ("received_at", "message_type", "message_control_id", "sending_application", "sending_facility",
                    "patient_id", "accession_numbers", "status", "ack_code", "error_code", "duplicate_count", "peer")
    list_filter = ("status", "ack_code", "message_type", "sending_application", "sending_facility")
    search_fields = ("=message_control_id", "sending_application", "sending_facility", "=patient_id",
                     "accession_numbers", "message_type", "status", "error_text")
    date_hierarchy = "received_at"
    list_per_page = 50
    show_full_result_count = False  # the log grows large: no COUNT(*) on every page
    readonly_fields = ("received_at", "peer", "sending_application", "sending_facility", "receiving_application",
                       "receiving_facility", "message_control_id", "message_type", "version_id", "character_set",
                       "status", "ack_code", "error_code", "error_location", "error_text", "patient_id",
                       "accession_numbers", "duplicate_count", "content_sha256", "replay_of", "effect",
                       "raw_message", "ack_message")
    exclude = ("raw", "ack")
    fieldsets = (
        (None, {"fields": ("received_at", "peer", "status", "ack_code", "error_code", "error_location",
                           "error_text", "duplicate_count")}),
        ("Message header", {"fields": ("message_type", "version_id", "message_control_id", "sending_application",
                                       "sending_facility", "receiving_application", "receiving_facility",
                                       "character_set", "content_sha256", "replay_of")}),
        ("Identifiers and effect", {"fields": ("patient_id", "accession_numbers", "effect")}),
        ("Raw message and ACK", {"fields": ("raw_message", "ack_message")}),
    )

    @admin.display(description="raw message")
    def raw_message(self, obj: InboundMessage) -> str:
        return format_html('<pre class="hl7-message">{}</pre>', readable_hl7(obj.raw, obj.character_set))

    @admin.display(description="ACK sent")
    def ack_message(self, obj: InboundMessage) -> str:
        return format_html('<pre class="hl7-message">{}</pre>', readable_hl7(obj.ack, obj.character_set))

    def has_add_permission(self, request) -> bool:
        return False  # messages arrive over MLLP only

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # the log is evidence: read-only

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(DeclaredSender)
class DeclaredSenderAdmin(admin.ModelAdmin):
    """Who may send which HL7 messages from where (hl7gateway.senders; the listeners re-read the
    list every HL7_SENDERS_REFRESH_SECONDS).  Senders declared in HL7_SENDERS are read-only here."""

    list_display = ("sending_application", "sending_facility", "address", "may_send_orders", "may_send_patients",
                    "may_send_merges", "enabled", "declared_in_environment")
    list_filter = ("enabled", "declared_in_environment")
    search_fields = ("sending_application", "sending_facility", "address")

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.declared_in_environment:
            return ("sending_application", "sending_facility", "address", "may_send_orders", "may_send_patients",
                    "may_send_merges", "enabled", "declared_in_environment")
        if obj is not None and obj.sends_patient_updates:
            return ("name", "host", "port", "tls", "sends_patient_updates")
        return ("declared_in_environment",)


@admin.register(InboundRefusal)
class InboundRefusalAdmin(admin.ModelAdmin):
    """Refused inbound messages counted per source address and hour (the first
    HL7_REFUSED_LOG_LIMIT of each are in the inbound log with status REFUSED)."""

    list_display = ("hour", "source_address", "refused_count", "last_sending_application", "last_sending_facility",
                    "last_message_type", "last_reason", "last_at")
    search_fields = ("=source_address", "last_sending_application", "last_sending_facility")
    date_hierarchy = "hour"

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


# --- The outbox, every kind of outbound message (hl7gateway.models.outbound) -----------------
from hl7gateway.models import OutboundAction, OutboundAttempt, OutboundDestination, OutboundMessage  # noqa: E402


@admin.register(OutboundDestination)
class OutboundDestinationAdmin(admin.ModelAdmin):
    """Billing, the EHR, a VNA ...: where signed reports, order status messages, filler orders,
    charges and patient updates go.  Destinations declared in HL7_ORU_DESTINATIONS take host,
    port, TLS (mllps://), the kinds of message (messages=), the ORU links (links=), the PDF (pdf=)
    and validation (validate=) from the environment (read-only here); the other fields stay
    editable.  A VNA's HL7 ADT receiver
    (``vna-<n>``, *patient updates to the archive*) takes host, port and TLS from its VNA
    destination (pacs admin, VNA_DESTINATIONS ?adt=) at each change forwarded."""

    list_display = ("name", "host", "port", "tls", "hl7_version", "receiving_application", "receiving_facility",
                    "text_value_type", "sends_results", "sends_order_status", "sends_charges", "sends_filler_orders",
                    "sends_patient_updates", "link_viewer", "link_wado_rs", "report_pdf", "validate_messages",
                    "enabled", "declared_in_environment")
    list_filter = ("enabled", "declared_in_environment", "hl7_version", "sends_results", "sends_order_status",
                   "sends_charges", "sends_filler_orders", "sends_patient_updates", "validate_messages")
    search_fields = ("name", "host", "receiving_application", "receiving_facility")

    def get_readonly_fields(self, request, obj=None):
        if obj is not None and obj.declared_in_environment:
            return ("name", "host", "port", "tls", "sends_results", "sends_order_status", "sends_charges",
                    "sends_filler_orders", "link_viewer", "link_wado_rs", "report_pdf", "validate_messages",
                    "declared_in_environment")
        if obj is not None and obj.sends_patient_updates:
            return ("name", "host", "port", "tls", "sends_patient_updates")
        return ("declared_in_environment",)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # its messages refer to it: disable it instead


class OutboundAttemptInline(admin.TabularInline):
    model = OutboundAttempt
    fields = ("number", "started_at", "finished_at", "outcome", "detail", "worker")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class OutboundActionInline(admin.TabularInline):
    model = OutboundAction
    fields = ("at", "username", "action", "from_status", "reason")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(OutboundMessage)
class OutboundMessageAdmin(AuditedAdmin, admin.ModelAdmin):
    """The outbox (ORU^R01, ORM^O01 / OMI^O23, DFT^P03, ADT^A08 / ADT^A40), read-only (retry and
    cancel are on the operator page /interfaces/)."""

    # The class of the messages' <pre> (a stylesheet: the Content-Security-Policy allows no inline style).
    class Media:
        css = {"all": ["pacs/admin.css"]}


    list_display = ("message_control_id", "destination", "message_type", "accession_number", "order_status",
                    "result_status", "hl7_version", "status", "attempt_count", "last_outcome", "created_at",
                    "delivered_at")
    list_filter = ("status", "kind", "destination", "result_status", "order_status", "last_outcome")
    search_fields = ("=message_control_id", "=accession_number", "patient_id_text")
    date_hierarchy = "created_at"
    list_per_page = 50
    show_full_result_count = False
    exclude = ("payload", "ack")
    readonly_fields = ("message_control_id", "destination", "kind", "message_type", "report_version",
                       "requested_procedure", "status_event", "order_status", "patient", "patient_id_text",
                       "accession_number", "result_status", "hl7_version", "status", "created_at", "next_attempt_at",
                       "dispatched_at", "leased_until", "attempt_count", "attempt_floor", "last_outcome",
                       "last_error", "delivered_at", "message_as_sent", "ack_received")
    inlines = [OutboundAttemptInline, OutboundActionInline]

    @admin.display(description="message as sent")
    def message_as_sent(self, obj: OutboundMessage) -> str:
        return format_html('<pre class="hl7-message">{}</pre>', readable_hl7(obj.payload, "UNICODE UTF-8"))

    @admin.display(description="ACK received")
    def ack_received(self, obj: OutboundMessage) -> str:
        return format_html('<pre class="hl7-message">{}</pre>', readable_hl7(obj.ack, "UNICODE UTF-8"))

    def has_add_permission(self, request) -> bool:
        return False  # rows are written by the signing transaction only

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
