"""Structured logging: one JSON object per line.

Log records carry identifiers (message control IDs, AE titles, row IDs) as ``extra``
fields; patient names never go into a log line.

``PatientDataFilter`` (installed on the console handler in ``settings.LOGGING``) is the
safety net: it redacts extras that name a patient (``patient_name``, ``birth_date`` ...,
and ``sample``: raw message bytes), masks accession numbers (extras ``accession_number``,
``accession_numbers``, ``accession``, and their values inside the message text) unless
``LOG_ACCESSION_NUMBERS`` is true, and cuts the ``DETAIL:`` part of database errors
(which quotes row values) from ``error`` / ``reason`` extras.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            # Database errors quote row values on their DETAIL line: cut it (PatientDataFilter).
            entry["exc"] = _DETAIL_LINE.sub("", self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


REDACTED = "[redacted]"
MASKED = "[masked]"
#: extras that would carry patient identity; their values never reach a log line.
PATIENT_KEYS = frozenset({
    "patient_name", "patient_names", "given_name", "family_name", "patient_birth_date", "birth_date",
    "patient_address", "address", "phone", "sample", "raw", "payload",
})
ACCESSION_KEYS = frozenset({"accession_number", "accession_numbers", "accession"})
_DETAIL = re.compile(r"\s*DETAIL:.*", re.DOTALL)
_DETAIL_LINE = re.compile(r"^\s*DETAIL:.*$", re.MULTILINE)


class PatientDataFilter(logging.Filter):
    """Redact patient identity and (unless allowed) accession numbers from a record's extras."""

    def filter(self, record: logging.LogRecord) -> bool:
        from django.conf import settings

        allow_accession = getattr(settings, "LOG_ACCESSION_NUMBERS", False)
        masked_values: list[str] = []
        for key in list(vars(record)):
            if key in _STANDARD:
                continue
            if key in PATIENT_KEYS:
                setattr(record, key, REDACTED)
            elif key in ACCESSION_KEYS and not allow_accession:
                value = getattr(record, key)
                if value not in (None, ""):
                    for v in value if isinstance(value, (list, tuple)) else [value]:
                        masked_values += [part for part in re.split(r"[,~\s]+", str(v)) if part]
                    setattr(record, key, MASKED)
            elif key in ("error", "reason") and isinstance(getattr(record, key), str):
                setattr(record, key, _DETAIL.sub("", getattr(record, key)))
        if masked_values:
            text = record.getMessage()
            for value in sorted(masked_values, key=len, reverse=True):
                text = text.replace(value, MASKED)
            record.msg, record.args = text, ()
        return True
