from django.apps import AppConfig


class WorklistConfig(AppConfig):
    name = "worklist"
    verbose_name = "Reading worklist"

    def ready(self):
        from pacs.dicomweb.access import register_token_authenticator
        from worklist import receivers  # noqa: F401 - connects the ris.signals receivers
        from worklist.api import user_for_token

        # DICOMweb takes the reporting API's tokens (the lookup lives here, above pacs).
        register_token_authenticator(user_for_token)
