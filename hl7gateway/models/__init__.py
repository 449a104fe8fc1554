"""hl7gateway models: the inbound message log (inbound.py) and the outbound queue (outbound.py)."""

from hl7gateway.models.inbound import InboundMessage
from hl7gateway.models.outbound import OutboundAction, OutboundAttempt, OutboundDestination, OutboundMessage

__all__ = ["InboundMessage", "OutboundAction", "OutboundAttempt", "OutboundDestination", "OutboundMessage"]
