"""The DIMSE side: one application entity serving Verification, MWL C-FIND, MPPS and C-STORE.

Each service lives in its own module exposing two functions the server collects:

- ``contexts() -> list[tuple[str, list[str]]]``: (SOP class UID, transfer syntax UIDs) to accept
- ``handlers() -> dict[str, callable]``: DIMSE command ("C-FIND", ...) -> handler(event),
  the event being ``pacs.dimse.acceptor.Event``

Handlers translate datasets into calls of domain services and the result back into a
status; an exception inside a handler becomes a failure status, never Success and never
a dropped association: every failure has its status (PS3.7 Annex C), and the SCU needs it
to know whether to retry.
"""

# The engine's Implementation Class UID and Implementation Version Name (PS3.7 D.3.3.2-3),
# sent in every A-ASSOCIATE-RQ/AC and written into the File Meta Information of the files it
# receives (PS3.10 7.1).  The UID is a UUID-derived UID under 2.25 (PS3.5 B.2), drawn once and
# fixed here: it names this implementation, not an installation.
IMPLEMENTATION_CLASS_UID = "2.25.340022820931116396313512628141727797569"
IMPLEMENTATION_VERSION_NAME = "RADWORKFLOW_1"
