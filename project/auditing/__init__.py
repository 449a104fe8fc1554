"""The audit API every app may use (DICOM PS3.15 A.5, IHE ATNA): the event vocabulary
(:mod:`project.auditing.events`), who acts (:mod:`project.auditing.actors`), the entry points that
record (:mod:`project.auditing.recording`) and the web pages' read records
(:mod:`project.auditing.web`).

The trail itself (its table, the writer thread, the hash chain) is the ``audit`` app, which
registers itself as the recorder when Django starts; so the domain (``ris``), which imports no app,
records its changes without importing ``audit``."""
