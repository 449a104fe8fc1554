"""Domain signals between imaging-side services.

``mpps_completed`` is sent inside the transaction that moves an MPPS to COMPLETED
(kwargs: ``performed_procedure_step``); the study-completion service listens for it.
"""

from django.dispatch import Signal

mpps_completed = Signal()

