"""Transfer syntaxes the engine accepts (listed in docs/dicom-conformance.md)."""

from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

# Non-pixel services (Verification, MWL, MPPS).
UNCOMPRESSED = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]
