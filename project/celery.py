"""The Celery application: VNA routing, ORU delivery and periodic sweeps.

Tasks take row IDs (never objects), are acknowledged late and must be idempotent
(outbox rows, not fire-and-forget: a task that runs twice, or whose worker dies, does no harm;
docs/architecture.md).
"""

import os

from celery import Celery, signals

from project import secret_key

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("pacs")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.setup_logging.connect
def _log_as_every_process(**kwargs) -> None:
    """The worker and beat log through settings.LOGGING (JSON lines, project.logs.PatientDataFilter)
    instead of Celery's own handlers, which would bypass the filter."""
    from logging.config import dictConfig

    from django.conf import settings

    dictConfig(settings.LOGGING)


@signals.worker_init.connect
@signals.beat_init.connect
def _refuse_without_secret_key(**kwargs) -> None:
    """The worker and beat run no system checks: they refuse to start without a SECRET_KEY of the
    operator's (project.secret_key), as every other process does."""
    from django.core.exceptions import ImproperlyConfigured

    try:
        secret_key.require()
    except ImproperlyConfigured as exc:
        # Celery logs and ignores an Exception raised by a signal receiver; SystemExit ends the process.
        raise SystemExit(f"pacs.E008: {exc}") from None


@signals.task_prerun.connect
@signals.task_postrun.connect
def _database_connections_like_requests(**kwargs) -> None:
    """Keep a worker's database connection across tasks, as Django does across requests: close
    it only when it is unusable (after an error) or older than CONN_MAX_AGE.  (With
    CELERY_DB_REUSE_MAX set, Celery no longer closes it after every task; this keeps a broken
    connection from outliving the task that broke it.)  Applies to every task of the worker."""
    from django.db import close_old_connections

    close_old_connections()
