"""The imaging side of the engine: DICOM services (PS3.4, PS3.7, PS3.8), the image store and
the hand-off of studies to the VNA."""
