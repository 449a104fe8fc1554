"""hl7gateway models: the inbound message log (inbound.py) and the outbound queue (outbound.py)."""

from hl7gateway.models.inbound import InboundMessage

__all__ = ["InboundMessage"]
