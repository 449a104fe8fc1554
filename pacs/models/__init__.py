"""Imaging-side models, one module per concern:

nodes.py      DicomNode (declared remote AEs), DicomRefusal (associations refused)
mpps.py       MPPS and what it performed                 -- MWL/MPPS issue
images.py     Study / Series / Instance index            -- image issue
transfers.py  VNA destinations and transfers             -- image issue
"""

from pacs.models.images import Instance, Series, StoreConflict, Study, StudyLink
from pacs.models.mpps import PerformedInstance, PerformedProcedureStep
from pacs.models.nodes import DicomNode, DicomRefusal
from pacs.models.transfers import Transfer, TransferItem, VnaDestination

__all__ = [
    "DicomNode", "DicomRefusal", "PerformedInstance", "PerformedProcedureStep",
    "Instance", "Series", "StoreConflict", "Study", "StudyLink", "Transfer", "TransferItem", "VnaDestination",
]
