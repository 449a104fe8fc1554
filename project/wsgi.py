"""WSGI entry point for the web process (gunicorn project.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

from project import secret_key

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
application = get_wsgi_application()

# gunicorn runs no system checks: without a SECRET_KEY of the operator's the app does not load
# (project.secret_key), so the web never signs sessions with a throw-away key.
secret_key.require()
