"""NumberOfStudyRelatedInstances (0020,1208), an IS return key, as a VNA answers it in a C-FIND
identifier (pydicom's IS) or a QIDO-RS DICOM JSON attribute (a number or a string, PS3.18 F.2.3):
a count, or None when it cannot be one (then the engine does not know whether it holds the study
whole), among them a 12-digit IS beyond what the prior's column holds."""

from __future__ import annotations

import pytest
from pydicom.valuerep import IS

from pacs.qr_scu import count


@pytest.mark.parametrize(("answered", "expected"), [
    (IS("3"), 3), ("12", 12), (" 7 ", 7), (0, 0), ([5], 5), (["5"], 5),
    (None, None), ("", None), ([], None), ([1, 2], None), ("3.5", None), ("-1", None), ("x", None),
    ("2147483647", 2147483647), ("999999999999", None)])
def test_a_count_as_answered(answered, expected):
    assert count(answered) == expected
