"""The DIMSE side: one application entity serving Verification, MWL C-FIND, MPPS and C-STORE.

Each service lives in its own module exposing two functions the server collects:

- ``contexts() -> list[tuple[str, list[str]]]``: (SOP class UID, transfer syntax UIDs) to accept
- ``handlers() -> dict[str, callable]``: DIMSE command ("C-FIND", ...) -> handler(event),
  the event being ``pacs.dimse.acceptor.Event``

Handlers translate datasets into calls of domain services and the result back into a
status; an exception inside a handler becomes a failure status, never Success and never
a dropped association (conventions: pynetdicom).
"""
