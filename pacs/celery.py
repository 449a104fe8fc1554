"""The Celery application: VNA routing, ORU delivery and periodic sweeps.

Tasks take row IDs (never objects), are acknowledged late and must be idempotent
(see docs and ``conventions.md``: outbox rows, not fire-and-forget).
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pacs.settings")

app = Celery("pacs")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
