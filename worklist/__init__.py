"""The radiologists' reading worklist (not the DICOM Modality Worklist)."""
