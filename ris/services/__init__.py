"""Domain services: the one place each rule lives.  Adapters (HL7, DICOM, web, Celery)
call these with plain values and translate the result back."""
