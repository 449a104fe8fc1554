"""The project package: settings, URLs, the Celery app, roles, logging, process forking and the
other shared infrastructure (TLS, HTTPS, sealed credentials) that every app may import.  It
imports no app itself, but for the composition roots ``project.urls`` and ``project.celery``
(the layer contract in pyproject.toml lists what they may reach)."""

from .celery import app as celery_app

__all__ = ("celery_app",)
