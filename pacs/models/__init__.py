"""Imaging-side models, one module per concern:

nodes.py      DicomNode (declared remote AEs), DicomRefusal (associations refused)
mpps.py       MPPS and what it performed (PS3.4 Annex F)
images.py     Study / Series / Instance index, resends with other content
transfers.py  VNA destinations and transfers, per-instance commitment (PS3.4 Annex J)
priors.py     relevant prior studies of an ordered procedure, fetched from the VNA (PS3.4 C.4.2)
"""

from pacs.models.images import Instance, Series, StoreConflict, Study, StudyLink
from pacs.models.mpps import PerformedInstance, PerformedProcedureStep
from pacs.models.nodes import DicomNode, DicomRefusal
from pacs.models.priors import Prior, PriorSearch
from pacs.models.transfers import Transfer, TransferItem, VnaDestination

__all__ = [
    "DicomNode", "DicomRefusal", "PerformedInstance", "PerformedProcedureStep", "Prior", "PriorSearch",
    "Instance", "Series", "StoreConflict", "Study", "StudyLink", "Transfer", "TransferItem", "VnaDestination",
]
