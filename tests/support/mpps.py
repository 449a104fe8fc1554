"""MPPS data sets as a modality sends them (PS3.4 F.7.2, IHE RAD-6 N-CREATE and RAD-7 N-SET):
built from plain values (``n_create_for``, ``n_set_for``) for the socket tests, the production
smoke test and the benchmarks, and from a scheduled step (``n_create_dataset``,
``completion_dataset``) for the MPPS tests.  Synthetic values only."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def n_create_for(*, study_instance_uid: str, accession_number: str = "", requested_procedure_id: str = "",
                 scheduled_procedure_step_id: str = "", patient_name: str = "DOE^JOHN", patient_id: str = "P1",
                 birth_date: str = "", sex: str = "", status: str = "IN PROGRESS", start_date: str = "20261126",
                 start_time: str = "091500", station: str = "CT1", modality: str = "CT") -> Dataset:
    """N-CREATE attributes (PS3.4 Table F.7.2-1) for one scheduled step, IN PROGRESS by default."""
    ds = Dataset()
    item = Dataset()
    item.StudyInstanceUID = study_instance_uid
    item.AccessionNumber = accession_number
    item.RequestedProcedureID = requested_procedure_id
    item.ScheduledProcedureStepID = scheduled_procedure_step_id
    item.ReferencedStudySequence = Sequence([])
    ds.ScheduledStepAttributesSequence = Sequence([item])
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    ds.ReferencedPatientSequence = Sequence([])
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedStationAETitle = station
    ds.PerformedStationName = ""
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = start_date
    ds.PerformedProcedureStepStartTime = start_time
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepDescription = "CT head"
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = Sequence([])
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = modality
    ds.StudyID = "1"
    ds.PerformedProtocolCodeSequence = Sequence([])
    ds.PerformedSeriesSequence = Sequence([])
    return ds


def n_set_for(references: list[tuple[str, str]], *, series_instance_uid: str | None = None,
              status: str = "COMPLETED", end_date: str = "20261126", end_time: str = "094500",
              modality: str = "CT") -> Dataset:
    """N-SET attributes (PS3.4 Table F.7.2-1): the final status and one performed series listing
    ``references`` as (ReferencedSOPClassUID, ReferencedSOPInstanceUID)."""
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = end_date
    ds.PerformedProcedureStepEndTime = end_time
    series = Dataset()
    series.SeriesInstanceUID = series_instance_uid or generate_uid()
    series.Modality = modality
    series.PerformingPhysicianName = ""
    series.OperatorsName = ""
    series.ProtocolName = "HEAD"
    series.SeriesDescription = "axial"
    series.RetrieveAETitle = ""
    refs = []
    for sop_class_uid, sop_instance_uid in references:
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class_uid
        ref.ReferencedSOPInstanceUID = sop_instance_uid
        refs.append(ref)
    series.ReferencedImageSequence = Sequence(refs)
    series.ReferencedNonImageCompositeSOPInstanceSequence = Sequence([])
    ds.PerformedSeriesSequence = Sequence([series])
    return ds


def n_create_dataset(step=None, *, status="IN PROGRESS", unscheduled=False) -> Dataset:
    """N-CREATE for a scheduled step (``ris`` ScheduledProcedureStep), or unscheduled."""
    if step is not None and not unscheduled:
        rp = step.requested_procedure
        return n_create_for(study_instance_uid=rp.study_instance_uid, accession_number=rp.accession_number,
                            requested_procedure_id=rp.requested_procedure_id,
                            scheduled_procedure_step_id=step.scheduled_procedure_step_id, status=status)
    return n_create_for(study_instance_uid=generate_uid(), status=status)


def completion_dataset(status="COMPLETED", n_images=3) -> tuple[Dataset, list[str]]:
    """N-SET with ``n_images`` new CT image references; returns it and their SOP Instance UIDs."""
    uids = [generate_uid() for _ in range(n_images)]
    return n_set_for([(CT_IMAGE, uid) for uid in uids], status=status), uids
