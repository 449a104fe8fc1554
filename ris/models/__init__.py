"""RIS models, one module per concern:

core.py     patients, identifiers, visits, orders, requested procedures, steps, status changes, merges
reports.py  reports, their versions, report templates
"""

from ris.models.core import (
    AccessionNumberAllocation,
    Order,
    Patient,
    PatientIdentifier,
    PatientMerge,
    RequestedProcedure,
    ScheduledProcedureStep,
    StatusChange,
    Visit,
)
from ris.models.reports import Report, ReportTemplate, ReportVersion

__all__ = [
    "AccessionNumberAllocation",
    "Order",
    "Patient",
    "PatientIdentifier",
    "PatientMerge",
    "Report",
    "ReportTemplate",
    "ReportVersion",
    "RequestedProcedure",
    "ScheduledProcedureStep",
    "StatusChange",
    "Visit",
]
