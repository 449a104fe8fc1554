"""Telling who counts DIMSE operations: each answer of a handler, per calling AE and status.

``counted(operation, handler)`` wraps a DIMSE event handler so that, once its answer is
decided, ``pacs.signals.dicom_operation`` is sent with the calling AE title (PS3.8 9.3.2, the
A-ASSOCIATE-RQ's Calling AE Title), the operation and the DIMSE status (PS3.7 Annex C).
Monitoring listens and counts (``monitoring.DicomOperation``); the DICOM services do not know
who listens.  The send costs a few microseconds per answer (one receiver); the receiver only
adds to an in-memory counter, so counting never delays or changes an answer.
"""

from __future__ import annotations

import functools
import inspect

from pacs.dimse.acceptor import failure_status
from pacs.signals import dicom_operation

# Pending statuses of a C-FIND (PS3.4 Table C.4-1): not the final answer.
_PENDING = (0xFF00, 0xFF01)
# A C-FIND closed before its final status (the association ended) is counted as Cancel.
_NO_FINAL_STATUS = 0xFE00


def _status_of(answer) -> int | None:
    """The DIMSE status in a handler's answer: an int, a Dataset with Status, or (status, ...)."""
    if isinstance(answer, tuple):
        answer = answer[0] if answer else None
    if isinstance(answer, int):
        return answer
    status = getattr(answer, "Status", None)
    return int(status) if status is not None else None


def _calling(event) -> str:
    try:
        return (event.assoc.requestor.ae_title or "").strip()
    except Exception:  # noqa: BLE001 - an event without an association is counted under ""
        return ""


def _answered(event, operation: str, status: int) -> None:
    dicom_operation.send(sender=None, calling_ae_title=_calling(event), operation=operation, status=status)


def counted(operation: str, handler):
    """Wrap a pynetdicom event handler so that each answer is told per calling AE and status.

    A generator handler (C-FIND) is counted once, with its final (non-pending) status.  A
    handler that raises is counted with the failure status the acceptor answers with.
    """
    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def gen_wrapper(event):
            final = None
            try:
                for answer in handler(event):
                    status = _status_of(answer)
                    if status is not None and status not in _PENDING:
                        final = status
                    yield answer
            except Exception:
                final = failure_status(operation)
                raise
            finally:
                _answered(event, operation, _NO_FINAL_STATUS if final is None else final)
        return gen_wrapper

    @functools.wraps(handler)
    def wrapper(event):
        try:
            answer = handler(event)
        except Exception:
            _answered(event, operation, failure_status(operation))
            raise
        status = _status_of(answer)
        if status is not None:
            _answered(event, operation, status)
        return answer
    return wrapper
