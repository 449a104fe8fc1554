"""DICOMweb on the engine (DICOM PS3.18): QIDO-RS, WADO-RS and WADO-URI under ``/dicomweb/``
(``pacs.dicomweb.views``), who may use them (``pacs.dicomweb.access``)."""
