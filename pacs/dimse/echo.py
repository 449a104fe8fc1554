"""Verification SOP Class (PS3.4 Annex A): C-ECHO."""

from __future__ import annotations

from pynetdicom.sop_class import Verification

from pacs.dimse.counting import counted
from pacs.dimse.transfer_syntaxes import UNCOMPRESSED


def contexts():
    return [(Verification, UNCOMPRESSED)]


def on_c_echo(event):
    return 0x0000


def handlers():
    # Each answer counted per calling AE and status (pacs.dimse.counting).
    return {"C-ECHO": counted("C-ECHO", on_c_echo)}
