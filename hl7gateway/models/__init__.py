"""hl7gateway models: the inbound message log (inbound.py), the outbound queue (outbound.py), the
declared senders and the record of refusals (senders.py)."""

from hl7gateway.models.inbound import InboundMessage
from hl7gateway.models.outbound import OutboundAction, OutboundAttempt, OutboundDestination, OutboundMessage
from hl7gateway.models.senders import DeclaredSender, InboundRefusal

__all__ = ["DeclaredSender", "InboundMessage", "InboundRefusal", "OutboundAction", "OutboundAttempt",
           "OutboundDestination", "OutboundMessage"]
