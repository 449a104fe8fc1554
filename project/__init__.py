"""The project package: settings, URLs, the Celery app, roles, logging, process forking and the
other shared infrastructure (TLS, HTTPS, sealed credentials, the audit API) that every app may
import.  It imports no app (the layer contract in pyproject.toml): ``project.urls`` includes the
apps' URL modules by name and ``project.celery`` finds their tasks by autodiscovery."""

from .celery import app as celery_app

__all__ = ("celery_app",)
