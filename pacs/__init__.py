"""The Django project package and the imaging side of the engine."""

from .celery import app as celery_app

__all__ = ("celery_app",)
