"""SQL lookups for DICOM matching.

``field__dicom_like=pattern``: ``field LIKE pattern ESCAPE '\\'`` with a pattern made by
``pacs.lib.dicom_values.wildcard_to_like``.  ``field__upper``: ``UPPER(field)`` (used with
the expression index of migration ``ris.0003_mwl_indexes``) for case-insensitive names.
On PostgreSQL LIKE is case-sensitive; SQLite's LIKE ignores ASCII case (a laptop default only).
"""

from __future__ import annotations

from django.db.models import CharField, Lookup
from django.db.models.functions import Upper


class DicomLike(Lookup):
    lookup_name = "dicom_like"

    def as_sql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        return f"{lhs} LIKE {rhs} ESCAPE '\\'", [*lhs_params, *rhs_params]


CharField.register_lookup(DicomLike)
CharField.register_lookup(Upper)
