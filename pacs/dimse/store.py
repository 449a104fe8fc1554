"""Storage SOP Classes, SCP role (PS3.4 Annex B): C-STORE into the file store and index.

The dataset is never decoded in memory: the acceptor (``pacs.dimse.acceptor``) writes it to a
file in the store's incoming directory as it arrives, the handler reads the header only
(``stop_before_pixels``, large values deferred), hands the file to the store (rename, fsync,
directory fsync; ``pacs.storage``) and the index (``pacs.services.images``), and answers
Success only after both are committed.  Statuses (PS3.4 B.2.3):

- 0x0000 success; also for a resend of a stored SOP Instance UID, identical (idempotent) or,
  with other content, kept or replaced by STORE_OVERWRITE_POLICY (``pacs.services.resends``)
- 0xA700 out of resources: disk full or read-only, database down (the SCU may retry)
- 0xA900 data set does not match SOP class: SOP Class/Instance UID differ from the command
- 0xC000 cannot understand: unreadable header, invalid or path-unsafe UIDs, a Series Instance
  UID already stored under another study
- 0xC001 cannot understand: a stored SOP Instance UID with other content, refused
  (STORE_OVERWRITE_POLICY=reject; a Cxxx status says a resend of the same data cannot succeed)
"""

from __future__ import annotations

import datetime as dt
import logging
from io import BytesIO
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, InterfaceError
from pydicom import dcmread
from pydicom.filereader import read_dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    RLELossless,
)
from pynetdicom import sop_class as sc

from pacs import auditing, storage
from pacs.dimse.counting import counted
from pacs.services import completion, images, resends
from project.text import no_nul

log = logging.getLogger("pacs.dimse.store")

STORAGE_SOP_CLASSES = [
    sc.CTImageStorage, sc.EnhancedCTImageStorage,
    sc.MRImageStorage, sc.EnhancedMRImageStorage,
    sc.ComputedRadiographyImageStorage,
    sc.DigitalXRayImageStorageForPresentation, sc.DigitalXRayImageStorageForProcessing,
    sc.DigitalMammographyXRayImageStorageForPresentation, sc.DigitalMammographyXRayImageStorageForProcessing,
    sc.UltrasoundImageStorage, sc.UltrasoundMultiFrameImageStorage,
    sc.XRayAngiographicImageStorage, sc.XRayRadiofluoroscopicImageStorage,
    sc.NuclearMedicineImageStorage, sc.PositronEmissionTomographyImageStorage,
    sc.SecondaryCaptureImageStorage, sc.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    sc.MultiFrameGrayscaleWordSecondaryCaptureImageStorage, sc.MultiFrameTrueColorSecondaryCaptureImageStorage,
    sc.EncapsulatedPDFStorage,
    sc.BasicTextSRStorage, sc.EnhancedSRStorage, sc.ComprehensiveSRStorage,
    sc.GrayscaleSoftcopyPresentationStateStorage,
]

STORAGE_TRANSFER_SYNTAXES = [
    ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1,
    JPEG2000Lossless, JPEG2000, RLELossless,
]

# The acceptor accepts an SCP/SCU Role Selection on these contexts (PS3.7 D.3.3.4): a C-GET's
# requestor proposes itself as their SCP, and its sub-operations come back on them (PS3.4 C.4.3).
ROLE_SELECTION = True

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
OTHER_CONTENT_REFUSED = 0xC001


def contexts():
    return [(uid, STORAGE_TRANSFER_SYNTAXES) for uid in STORAGE_SOP_CLASSES]


def _text(ds, keyword: str) -> str:
    value = ds.get(keyword, "")
    # NUL pads only UI values (PS3.5 6.2, stripped by pydicom); elsewhere it is outside every
    # character repertoire (PS3.5 6.1). The file keeps the bytes as sent; the index keeps U+FFFD
    # in its place (project.text), and a UID holding one is then refused as invalid.
    return "" if value is None else no_nul(str(value).strip())


def _int(ds, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _date(value: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(value[:8], "%Y%m%d").date()
    except (TypeError, ValueError):
        return None


_PIXEL_DATA = 0x7FE00010


def _header_from_head(head: bytes, transfer_syntax_uid: str):
    """The data set's header parsed from its first bytes in memory (the acceptor keeps them),
    or None when the header does not end inside them at Pixel Data (then the file is read)."""
    if not head or transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
        return None
    little = transfer_syntax_uid != ExplicitVRBigEndian
    reached = []

    def at_pixel_data(tag, vr, length) -> bool:
        if tag == _PIXEL_DATA:
            reached.append(True)
            return True
        return False

    try:
        ds = read_dataset(BytesIO(head), transfer_syntax_uid == ImplicitVRLittleEndian, little,
                          stop_when=at_pixel_data, defer_size="64 KB")
    except Exception:  # noqa: BLE001 - cut in the middle of an element: read the file instead
        return None
    return ds if reached else None


def read_attributes(path, *, transfer_syntax_uid: str, calling_ae_title: str,
                    head: bytes = b"") -> images.InstanceAttributes:
    """The header of a received file as plain values (pixel data and large values not read)."""
    ds = _header_from_head(head, transfer_syntax_uid)
    if ds is None:
        ds = dcmread(path, stop_before_pixels=True, defer_size="64 KB", force=True)
    issuer_acc = ""
    seq = ds.get("IssuerOfAccessionNumberSequence")
    if seq:
        issuer_acc = _text(seq[0], "LocalNamespaceEntityID") or _text(seq[0], "UniversalEntityID")
    return images.InstanceAttributes(
        sop_class_uid=_text(ds, "SOPClassUID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        transfer_syntax_uid=transfer_syntax_uid,
        accession_number=_text(ds, "AccessionNumber"),
        issuer_of_accession_number=issuer_acc,
        patient_id=_text(ds, "PatientID"),
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID"),
        patient_name=_text(ds, "PatientName"),
        patient_birth_date=_text(ds, "PatientBirthDate"),
        patient_sex=_text(ds, "PatientSex"),
        study_date=_date(_text(ds, "StudyDate")),
        study_time=_text(ds, "StudyTime"),
        study_description=_text(ds, "StudyDescription"),
        modality=_text(ds, "Modality"),
        series_number=_int(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription"),
        body_part_examined=_text(ds, "BodyPartExamined"),
        instance_number=_int(ds, "InstanceNumber"),
        calling_ae_title=calling_ae_title,
    )


def on_c_store(event):
    """C-STORE: store, index, then answer (see module docstring for the statuses)."""
    request = event.request
    calling = (event.assoc.requestor.ae_title or "").strip()
    temporary = None
    if event.receive_error is not None:
        log.error("C-STORE failed: storage", extra={"calling_ae_title": calling, "error": str(event.receive_error)[:200]})
        return OUT_OF_RESOURCES
    try:
        try:
            temporary = Path(event.dataset_path)  # zero preamble and our File Meta Information
            event.dataset_path = None  # ours now: discarded below unless stored
            attrs = read_attributes(
                temporary, transfer_syntax_uid=str(event.context.transfer_syntax), calling_ae_title=calling,
                head=event.dataset_head,
            )
        except OSError:
            raise  # the file we just wrote cannot be read: out of resources, below
        except Exception as exc:  # noqa: BLE001 - an unreadable dataset
            log.warning("C-STORE dataset unreadable", extra={"calling_ae_title": calling, "error": str(exc)[:200]})
            return CANNOT_UNDERSTAND
        if attrs.sop_instance_uid != str(request.AffectedSOPInstanceUID) or (
            attrs.sop_class_uid != str(request.AffectedSOPClassUID)
        ):
            log.warning("C-STORE dataset does not match its command", extra={"calling_ae_title": calling})
            return DATASET_DOES_NOT_MATCH
        result = images.store_instance(attrs, temporary)
        temporary = None
    except storage.InvalidUID as exc:
        log.warning("C-STORE refused: invalid UID", extra={"calling_ae_title": calling, "error": str(exc)[:200]})
        return CANNOT_UNDERSTAND
    except images.InstanceConflict as exc:
        log.warning("C-STORE refused: UID conflict", extra={"calling_ae_title": calling, "error": str(exc)[:200]})
        return CANNOT_UNDERSTAND
    except resends.ResendRejected:
        return OTHER_CONTENT_REFUSED  # recorded and logged by pacs.services.resends
    except (storage.StorageFull, OSError) as exc:
        log.error("C-STORE failed: storage", extra={"calling_ae_title": calling, "error": str(exc)[:200]})
        return OUT_OF_RESOURCES
    except (DatabaseError, InterfaceError) as exc:
        log.error("C-STORE failed: database", extra={"calling_ae_title": calling, "error": str(exc)[:200]})
        return OUT_OF_RESOURCES
    finally:
        storage.discard(temporary)
    if result.mpps_completed:
        # This instance may be the last one a COMPLETED MPPS was waiting for.
        try:
            completion.check_study(result.study_id, cause="instance after MPPS COMPLETED")
        except Exception:  # noqa: BLE001 - stored and indexed; the sweep completes the study later
            log.exception("completion check after C-STORE failed")
    if settings.AUDIT_ENABLED:  # one audit record per study at the association's end (pacs.auditing)
        auditing.instance_received(event.assoc, attrs.study_instance_uid, attrs.patient_id, attrs.issuer_of_patient_id)
    return SUCCESS


def handlers():
    # Each answer counted per calling AE and status (pacs.dimse.counting).
    return {"C-STORE": counted("C-STORE", on_c_store)}
