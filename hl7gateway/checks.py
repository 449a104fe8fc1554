"""System checks of the inbound sender policy (stable IDs, listed in README "Troubleshooting").

hl7gateway.E102  HL7_SENDERS or HL7_UNDECLARED_SENDERS_FROM cannot be parsed
hl7gateway.E103  (deploy) HL7_UNDECLARED_SENDERS_FROM admits undeclared senders from every address
"""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, register

from hl7gateway import senders


@register(Tags.compatibility)
def check_sender_settings(app_configs, **kwargs):
    errors = []
    try:
        senders.parse_senders(settings.HL7_SENDERS)
    except ValueError as exc:
        errors.append(Error(f"HL7_SENDERS: {exc}.", hint="APP^FACILITY@address-or-CIDR[:orders+patients+merges],... "
                            "(see .env.example)", id="hl7gateway.E102"))
    try:
        senders.networks(settings.HL7_UNDECLARED_SENDERS_FROM)
    except ValueError as exc:
        errors.append(Error(f"HL7_UNDECLARED_SENDERS_FROM: {exc}.", hint="addresses or CIDR networks, or none",
                            id="hl7gateway.E102"))
    return errors


@register(Tags.security, deploy=True)
def check_undeclared_senders(app_configs, **kwargs):
    if senders.admits_everywhere(settings.HL7_UNDECLARED_SENDERS_FROM):
        return [Error(
            "HL7_UNDECLARED_SENDERS_FROM admits undeclared HL7 senders from every address: any host may send "
            "orders, patient updates and merges.",
            hint="Declare the senders (HL7_SENDERS or the admin) and set HL7_UNDECLARED_SENDERS_FROM=none "
                 "(or the loopback default).",
            id="hl7gateway.E103",
        )]
    return []
