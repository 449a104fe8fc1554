"""Text the database can hold.

PostgreSQL's ``text``, ``varchar`` and ``jsonb`` cannot hold the character zero (PostgreSQL
documentation, 8.3 Character Types and 8.14 JSON Types), and a statement carrying one fails as
a whole. HL7 v2 (no data type allows it) and DICOM (only a UI value is padded with it, PS3.5
6.2) never send it in a value, but a faulty sender may. Where a value from outside is stored,
it goes through ``no_nul`` first: U+0000 becomes U+FFFD (the replacement character), which
keeps the rest of the value and marks the place.
"""

from __future__ import annotations

NUL = "\x00"
REPLACEMENT = "\ufffd"


def no_nul(value):
    """``value`` with every U+0000 replaced by U+FFFD, in strings, dict keys and lists at any depth
    (other values as they are)."""
    if isinstance(value, str):
        return value.replace(NUL, REPLACEMENT) if NUL in value else value
    if isinstance(value, dict):
        return {no_nul(k): no_nul(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [no_nul(v) for v in value]
    return value
