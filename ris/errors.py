"""Domain errors.  Adapters translate them: HL7 into AE + ERR, DICOM into a status."""

from __future__ import annotations


class DomainError(Exception):
    """A request the domain refuses.  ``code`` is the HL7 table 0357 error code that fits."""

    code = 207  # application internal error

    def __init__(self, message: str, *, location: str = ""):
        super().__init__(message)
        self.location = location  # e.g. "ORC^1^1" (segment^sequence^field), for ERR-2


class RequiredFieldMissing(DomainError):
    code = 101


class TableValueNotFound(DomainError):
    code = 103


class UnknownKey(DomainError):
    """An order, patient or step that should exist does not (HL7 0357: 204)."""

    code = 204


class DuplicateKey(DomainError):
    code = 205


class OrderCancelled(DomainError):
    """A change (ORC-1 XO) of an order or procedure the placer cancelled or discontinued: refused,
    as a filler answers UX "unable to change" (HL7 v2.5.1 table 0119); HL7 0357 has no closer code
    than 207."""

    code = 207


class InvalidTransition(DomainError):
    """A status change not allowed by ris.states."""

    code = 207
