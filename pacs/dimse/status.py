"""DIMSE status codes shared by the SCP handlers, and the failure response they answer.

The codes are those of PS3.7 Annex C (general statuses) and PS3.4 C.4.1.1.4 (C-FIND) used by
more than one service; codes that belong to one service stay in its module.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

SUCCESS = 0x0000
PENDING = 0xFF00
CANCELED = 0xFE00
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # C-FIND, C-MOVE, C-GET (PS3.4 C.4.1.1.4)
UNABLE_TO_PROCESS = 0xC000  # C-FIND, C-MOVE, C-GET (PS3.4 C.4.1.1.4)

ERROR_COMMENT_LENGTH = 64  # ErrorComment (0000,0902) is LO (PS3.7 E.1)


def failure(code: int, text: str, *, error_id: int | None = None, offending: Iterable[str] = ()) -> Dataset:
    """A failure status: Status with ErrorComment (0000,0902) cut to its 64 characters, and,
    where given, ErrorID (0000,0903) and AttributeIdentifierList (0000,1005) of the offending
    attributes by DICOM keyword (PS3.7 C.4); unknown keywords are left out."""
    status = Dataset()
    status.Status = code
    status.ErrorComment = text[:ERROR_COMMENT_LENGTH]
    if error_id is not None:
        status.ErrorID = error_id
    tags = [tag for tag in (tag_for_keyword(k) for k in offending) if tag is not None]
    if tags:
        status.AttributeIdentifierList = tags
    return status
