r"""Structured logging: one JSON object per line.

Log records carry identifiers (message control IDs, AE titles, row IDs) as ``extra``
fields; patient names never go into a log line.

``PatientDataFilter`` (installed on the console handler in ``settings.LOGGING``) is the
safety net: it redacts extras that name a patient (``patient_name``, ``birth_date`` ...,
and ``sample``: raw message bytes), masks accession numbers (extras ``accession_number``,
``accession_numbers``, ``accession``, and their values inside the message text) unless
``LOG_ACCESSION_NUMBERS`` is true, and cuts the ``DETAIL:`` part of database errors
(which quotes row values) from ``error`` / ``reason`` extras.  It also scrubs what other code puts
in a line:

- query strings, in every message (``GET /?q=SMITH``: a worklist search names a patient), and the
  ``request`` extra Django's ``django.request`` logger adds on a 4xx/5xx (method and path only);
- the arguments and return value in Celery's task lines (``celery.app.trace``);
- quoted field text in the messages of libraries that quote what they could not read:
  python-hl7 (``Error decoding hex value [4G], field [SMITH\X4G\...]``: the exception, whose
  message quotes a fragment, is reduced to its type), pydicom and Python warnings (``Invalid value
  for VR PN: 'SMITH'``).

``NoPatientDataExceptionReporterFilter`` (``DEFAULT_EXCEPTION_REPORTER_FILTER``) hides every
request parameter, the query string and every frame's local variables from Django's error reports.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

from django.views.debug import ExceptionReporter, SafeExceptionReporterFilter

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


_QUERY = re.compile(r"(/[^\s?\"']*)\?[^\s\"']*")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"|\[[^\]]*\]")
_TASK_VALUES = ("args", "kwargs", "return_value")


def _quotes_field_text(record: logging.LogRecord) -> bool:
    """Libraries whose messages quote the text they could not read (python-hl7 names its loggers
    by file path)."""
    name = record.name.replace("\\", "/")
    return "/hl7/" in name or name.startswith(("pydicom", "py.warnings"))


def _scrub_text(record: logging.LogRecord) -> None:
    try:
        text = record.getMessage()
    except Exception:  # noqa: BLE001 - a broken format string: log the template alone
        text = str(record.msg)
    scrubbed = _QUERY.sub(rf"\1?{REDACTED}", text)
    if _quotes_field_text(record):
        scrubbed = _QUOTED.sub(lambda m: m.group(0)[0] + REDACTED + m.group(0)[-1], scrubbed)
        if record.exc_info and record.exc_info[0] is not None:
            scrubbed += f" ({record.exc_info[0].__name__})"
        record.exc_info, record.exc_text = None, None
    if scrubbed != text:
        record.msg, record.args = scrubbed, ()


class PatientDataFilter(logging.Filter):
    """Redact patient identity and (unless allowed) accession numbers from a record's extras."""

    def filter(self, record: logging.LogRecord) -> bool:
        from django.conf import settings

        if record.name == "celery.app.trace" and isinstance(record.args, dict):
            record.args = {k: REDACTED if k in _TASK_VALUES else v for k, v in record.args.items()}
        _scrub_text(record)

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
            elif key == "request":
                value = getattr(record, key)
                path = getattr(value, "path", None)
                setattr(record, key, f"{getattr(value, 'method', '')} {path}" if isinstance(path, str) else REDACTED)
            elif key in ("error", "reason") and isinstance(getattr(record, key), str):
                setattr(record, key, _DETAIL.sub("", getattr(record, key)))
        if masked_values:
            text = record.getMessage()
            for value in sorted(masked_values, key=len, reverse=True):
                text = text.replace(value, MASKED)
            record.msg, record.args = text, ()
        return True


class NoPatientDataExceptionReporterFilter(SafeExceptionReporterFilter):
    """Django's error reports (the DEBUG page, a mail to ADMINS) without request values: a
    worklist search or a report text is patient data, and so are a view's local variables."""

    def is_active(self, request) -> bool:
        return True

    def get_post_parameters(self, request):
        return {} if request is None else {key: self.cleansed_substitute for key in request.POST}

    def get_safe_request_meta(self, request):
        meta = super().get_safe_request_meta(request)
        for key in ("QUERY_STRING", "REQUEST_URI", "RAW_URI", "HTTP_REFERER"):
            if key in meta:
                meta[key] = self.cleansed_substitute
        return meta

    def get_traceback_frame_variables(self, request, tb_frame):
        return [(name, self.cleansed_substitute) for name in tb_frame.f_locals]


class NoPatientDataExceptionReporter(ExceptionReporter):
    """Also the GET parameters, cookies and the URL's query string, which Django's report shows unfiltered."""

    def get_traceback_data(self):
        data = super().get_traceback_data()
        substitute = self.filter.cleansed_substitute
        if self.request is not None:
            data["request_GET_items"] = [(key, substitute) for key in self.request.GET]
            data["request_COOKIES_items"] = [(key, substitute) for key in self.request.COOKIES]
            data["request_FILES_items"] = [(key, substitute) for key in self.request.FILES]
            data["request_insecure_uri"] = _QUERY.sub(rf"\1?{REDACTED}", data.get("request_insecure_uri", ""))
        return data
