"""Accounts: sign-in (local and directory), lockout, sessions, and their audit records."""
