"""Export of the audit trail to an Audit Record Repository (IHE ATNA).

- ``message``: one audit record as a DICOM audit message (PS3.15 A.5), valid against
  ``audit-message.rng`` (the PS3.15 A.5.1.1 schema);
- ``syslog``: RFC 5424 messages sent over TLS (RFC 5425), TCP (same framing) or UDP (RFC 5426);
- ``export``: ``export_batch(records, sender)``, the step a cursor over the audit trail repeats.

This package imports nothing at import time, so that project.settings can read
``destination.parse_url``.
"""
