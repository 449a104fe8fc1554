"""System checks of the inbound sender policy (stable IDs, listed in README "Troubleshooting").

hl7gateway.E102  HL7_SENDERS or HL7_UNDECLARED_SENDERS_FROM cannot be parsed
hl7gateway.E103  (deploy) HL7_UNDECLARED_SENDERS_FROM admits undeclared senders from every address
hl7gateway.E104  the MLLP over TLS port cannot run as configured (HL7_MLLP_TLS_PORT,
                 HL7_MLLP_TLS_CLIENT_CERTIFICATES, TLS_CERTIFICATE, TLS_CA_CERTIFICATES)
hl7gateway.E105  CHARGE_POSTING or CHARGE_POSTING_BY_CODE cannot be parsed (the error names the entry)
"""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, register

from hl7gateway import charges, senders
from project.tls import CLIENT_CERTIFICATE_POLICIES


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


@register(Tags.compatibility)
def check_mllp_tls_settings(app_configs, **kwargs):
    policy = settings.HL7_MLLP_TLS_CLIENT_CERTIFICATES
    if policy not in CLIENT_CERTIFICATE_POLICIES:
        return [Error(f"HL7_MLLP_TLS_CLIENT_CERTIFICATES={policy!r} is not one of "
                      f"{', '.join(CLIENT_CERTIFICATE_POLICIES)}.", id="hl7gateway.E104")]
    if not settings.HL7_MLLP_TLS_PORT:
        return []
    if not (settings.TLS_CERTIFICATE and settings.TLS_PRIVATE_KEY):
        return [Error("HL7_MLLP_TLS_PORT is set but TLS_CERTIFICATE and TLS_PRIVATE_KEY are not.",
                      hint="Name the engine's certificate and key, or set HL7_MLLP_TLS_PORT=0.", id="hl7gateway.E104")]
    if policy != "none" and not settings.TLS_CA_CERTIFICATES:
        return [Error(f"HL7_MLLP_TLS_CLIENT_CERTIFICATES={policy} needs TLS_CA_CERTIFICATES (the CA that signs the "
                      "senders' certificates).", id="hl7gateway.E104")]
    return []


@register(Tags.compatibility)
def check_charge_posting(app_configs, **kwargs):
    """hl7gateway.E105: a charge setting that cannot be read would post no charge at all (IHE
    RAD-35); it is refused at start, naming the entry, rather than found missing in billing."""
    errors = []
    try:
        charges.parse_kinds(settings.CHARGE_POSTING, where="CHARGE_POSTING")
    except ValueError as exc:
        errors.append(Error(f"{exc}.", id="hl7gateway.E105"))
    try:
        charges.parse_by_code(settings.CHARGE_POSTING_BY_CODE)
    except ValueError as exc:
        errors.append(Error(f"CHARGE_POSTING_BY_CODE: {exc}.",
                            hint="CODE=technical;CODE=professional;CODE=technical,professional;CODE=none",
                            id="hl7gateway.E105"))
    return errors
