"""Signals of the accounts.

``account_locked`` is sent when repeated failed sign-ins lock a user name or a client address
(:mod:`accounts.signin`; kwargs: ``username``, ``ip_address``, ``request``): a Security Alert
for the audit trail (DICOM PS3.15 A.5.3.11).
"""

from django.dispatch import Signal

account_locked = Signal()
