"""Import every module of the engine, and every library module the configured processes load
lazily, in whatever interpreter runs this script (the production smoke test runs it with the
virtual environment built from ``requirements.txt`` alone).

Prints the modules that failed with their error and exits 1 when any did.  Lazily loaded
modules are the ones an ``import`` of our code does not reach: the kombu transports behind
CELERY_BROKER_URL (``redis://``, ``filesystem://``), Celery's beat scheduler and pool, the
gunicorn worker class, the database backends behind DATABASE_URL, whitenoise's storage, and the
HL7 validator and PDF library of the outbound destinations that ask for them.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APPS = ("pacs", "ris", "hl7gateway", "worklist", "monitoring")
LAZY = (
    "kombu.transport.redis",
    "kombu.transport.filesystem",
    "celery.beat",
    "celery.apps.worker",
    "celery.apps.beat",
    "celery.concurrency.prefork",
    "celery.backends.redis",
    "gunicorn.app.wsgiapp",
    "gunicorn.workers.sync",
    "gunicorn.workers.gthread",
    "django.db.backends.postgresql.base",
    "django.db.backends.sqlite3.base",
    "whitenoise.storage",
    "whitenoise.middleware",
    "honcho.command",
    # Loaded by hl7gateway.conformance (a destination with validate=1) and hl7gateway.report_pdf
    # (a destination with pdf=1) only when used.
    "hl7apy.parser",
    "hl7apy.validation",
    "reportlab.platypus",
)


def engine_modules() -> list[str]:
    names = []
    for app in APPS:
        package = importlib.import_module(app)
        names.append(app)
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{app}."):
            names.append(info.name)
    return names


def main() -> int:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    failed: list[tuple[str, str]] = []
    modules = engine_modules() + list(LAZY)
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - every failure is reported, none stops the check
            failed.append((name, traceback.format_exc(limit=3)))
    for name, error in failed:
        print(f"FAILED {name}\n{error}")
    print(f"imported {len(modules) - len(failed)} of {len(modules)} modules with {sys.executable}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
