"""Destination tables kept in step with the environment (deployment as code): declared rows are
created or updated, rows no longer declared are disabled, never deleted (their messages and
transfers stay visible)."""

from __future__ import annotations

from collections.abc import Callable

from django.db import transaction
from django.db.models import Q


def sync_declared(model, declared: dict[str, dict], *, flag: str, retire: dict,
                  on_created: Callable[[object], None] | None = None,
                  on_retired: Callable[[object], None] | None = None) -> list:
    """Make the rows of ``model`` (keyed by ``name``, ``flag`` marking the declared ones) match
    ``declared`` ({name: fields}).

    A declared row is created, or updated when a declared field differs (other fields keep
    their admin values); a row marked ``flag`` but no longer declared gets the ``retire``
    values.  Costs one query when nothing changed.  Returns the declared rows.
    """
    with transaction.atomic(savepoint=False):
        current = {r.name: r for r in model.objects.filter(Q(**{flag: True}) | Q(name__in=list(declared)))}
        rows = []
        for name, fields in declared.items():
            wanted = {**fields, flag: True}
            row = current.get(name)
            if row is None:
                row = model.objects.create(name=name, **wanted)
                if on_created:
                    on_created(row)
            elif any(getattr(row, k) != v for k, v in wanted.items()):
                for k, v in wanted.items():
                    setattr(row, k, v)
                row.save(update_fields=[*wanted, "updated_at"])
            rows.append(row)
        for name, row in current.items():
            if name in declared or not getattr(row, flag):
                continue
            if all(getattr(row, k) == v for k, v in retire.items()):
                continue
            for k, v in retire.items():
                setattr(row, k, v)
            row.save(update_fields=[*retire, "updated_at"])
            if on_retired:
                on_retired(row)
    return rows
