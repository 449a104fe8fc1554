from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts"

    def ready(self):
        # directory, sessions, signin: sign-in and session receivers and checks.
        from accounts import auth_audit, directory, sessions, signin  # noqa: F401

        # Sign-in, sign-out, lockouts and account changes on the audit trail.
        auth_audit.connect()
