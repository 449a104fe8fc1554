"""Modality Performed Procedure Step SOP Class (1.2.840.10008.3.1.2.3.3), SCP role, PS3.4 Annex F.

N-CREATE and N-SET are translated into ``pacs.services.mpps.create`` / ``update`` with
plain values (UID, DICOM JSON, calling AE).  A refusal answers its DIMSE status with
ErrorComment (and ErrorID / AttributeIdentifierList where they apply); anything unexpected
answers 0x0110 processing failure, never Success.
"""

from __future__ import annotations

import logging

from django.db import DatabaseError
from pydicom.dataset import Dataset
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from pacs.dimse import db
from pacs.dimse.counting import counted
from pacs.dimse.status import SUCCESS, failure
from pacs.dimse.transfer_syntaxes import UNCOMPRESSED
from pacs.services import mpps as service

log = logging.getLogger("pacs.dimse.mpps")



def contexts():
    return [(ModalityPerformedProcedureStep, UNCOMPRESSED)]


def _status(refused: service.MppsRefused) -> Dataset:
    return failure(refused.status, refused.comment, error_id=refused.error_id, offending=refused.offending)


def _answer(kind: str, call, event, uid: str, dataset_of):
    calling = event.assoc.requestor.ae_title.strip()
    try:
        attributes = dataset_of(event)
        pps = db.run(call, uid, attributes.to_json_dict(), calling_ae_title=calling,
                     source_address=event.assoc.requestor.address or "")
    except service.MppsRefused as refused:
        log.warning(f"mpps {kind} refused", extra={"calling_ae_title": calling, "sop_instance_uid": uid,
                                                   "status": hex(refused.status), "reason": refused.comment})
        return _status(refused), None
    except DatabaseError as exc:
        log.error(f"mpps {kind} failed", extra={"calling_ae_title": calling, "sop_instance_uid": uid, "error": str(exc)})
        return _status(service.MppsRefused(service.PROCESSING_FAILURE, "database unavailable")), None
    except Exception:  # noqa: BLE001 - a failure status, never a dropped association
        log.exception(f"mpps {kind} failed", extra={"calling_ae_title": calling, "sop_instance_uid": uid})
        return _status(service.MppsRefused(service.PROCESSING_FAILURE, "internal error")), None
    log.info(f"mpps {kind}", extra={"calling_ae_title": calling, "mpps": pps.pk, "status": pps.status,
                                    "scheduled": pps.scheduled_step_id is not None})
    return SUCCESS, attributes


def on_n_create(event):
    """N-CREATE: the modality started a procedure step."""
    uid = str(event.request.AffectedSOPInstanceUID or "")
    return _answer("n-create", service.create, event, uid, lambda e: e.attribute_list)


def on_n_set(event):
    """N-SET: the modality updated, completed or discontinued it."""
    uid = str(event.request.RequestedSOPInstanceUID or "")
    return _answer("n-set", service.update, event, uid, lambda e: e.modification_list)


def handlers():
    # Each answer counted per calling AE and status (pacs.dimse.counting).
    return {"N-CREATE": counted("MPPS N-CREATE", on_n_create), "N-SET": counted("MPPS N-SET", on_n_set)}
