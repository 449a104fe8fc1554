"""Signals the RIS domain sends so that other apps can follow its changes without ris
importing them (ris imports nothing of ours).

Both are sent inside the transaction that made the change:

- ``patient_changed`` (kwarg ``patient_id``): demographics updated (A08) or a merge (A40)
  moved studies to this patient.
- ``procedure_changed`` (kwarg ``requested_procedure_id``): priority, procedure or
  accession data of a requested procedure changed (XO).
"""

from django.dispatch import Signal

patient_changed = Signal()
procedure_changed = Signal()
