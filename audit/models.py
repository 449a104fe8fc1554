"""The audit trail's rows: append-only at two levels.

The model refuses to change or delete a row (:class:`AppendOnlyError`); the database refuses it
too (triggers of migration 0002): an UPDATE is let through only when it seals a row not yet
sealed (sets ``seq``, ``prev_hash``, ``record_hash`` and nothing else), a DELETE only while a
retention purge runs (:func:`audit.chain.purge`).  Whoever bypasses both (a superuser disabling the
triggers) is found by :func:`audit.chain.verify`, which recomputes the hash chain.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class AppendOnlyError(RuntimeError):
    """An attempt to change or delete an audit record."""


class _AppendOnlyQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("audit records are append-only: QuerySet.update() is refused")

    def delete(self):
        raise AppendOnlyError("audit records are append-only: QuerySet.delete() is refused "
                              "(retention: audit.chain.purge)")

    # Django's deletion collector deletes related rows with _raw_delete: refuse it as well.
    def _raw_delete(self, using):
        raise AppendOnlyError("audit records are append-only: delete is refused")

    _raw_delete.queryset_only = True


class _AppendOnly(models.Model):
    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError(f"audit records are append-only: {type(self).__name__} {self.pk} cannot be saved again")
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("audit records are append-only: delete() is refused (retention: audit.chain.purge)")


class AuditRecord(_AppendOnly):
    """One audit message (PS3.15 A.5.1): what happened, who did it, to what, with what outcome.

    ``event_id`` / ``event_type`` hold DCM code values (:mod:`project.auditing.events`); ``objects`` the
    participant objects (A.5.2 ParticipantObjectIdentification) as ``{"type", "id", "issuer"?,
    "detail"?}``; ``detail`` what was asked, a change's before and after, counts, control IDs.
    ``seq`` / ``prev_hash`` / ``record_hash`` are the hash chain (:mod:`audit.chain`): null and
    blank until the sealer reaches the row.

    The field ``objects`` (the participant objects) takes the usual name of the manager: the
    manager is ``AuditRecord.records``.
    """

    id = models.BigAutoField(primary_key=True)
    occurred_at = models.DateTimeField(db_index=True)
    event_id = models.CharField(max_length=16)
    event_type = models.CharField(max_length=16, blank=True, default="")
    action = models.CharField(max_length=1)
    outcome = models.PositiveSmallIntegerField(default=0)
    actor = models.CharField(max_length=255)
    actor_kind = models.CharField(max_length=16)
    source_address = models.CharField(max_length=255, blank=True, default="")
    destination = models.CharField(max_length=255, blank=True, default="")
    objects = models.JSONField(default=list, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    seq = models.BigIntegerField(null=True, blank=True)
    prev_hash = models.CharField(max_length=64, blank=True, default="")
    record_hash = models.CharField(max_length=64, blank=True, default="")

    records = _AppendOnlyQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(fields=["actor", "occurred_at"], name="audit_actor_time"),
            models.Index(fields=["event_id", "occurred_at"], name="audit_event_time"),
            # The sealer's work list: small, since rows leave it within seconds.
            models.Index(fields=["id"], condition=Q(seq__isnull=True), name="audit_unsealed"),
        ]
        # Unique among sealed records only: a record is written unsealed, and an index entry for
        # its null would be one more write on every audited operation's path.
        constraints = [models.UniqueConstraint(fields=["seq"], condition=Q(seq__isnull=False), name="audit_seq")]
        default_permissions = ("view",)

    def __str__(self) -> str:
        return f"audit {self.pk} {self.event_id}/{self.action} by {self.actor_kind}:{self.actor}"


class AuditPatient(_AppendOnly):
    """One row per patient an audit record names: "who saw patient X" is an indexed query.

    Patients are identified as HL7 PID-3 / DICOM PatientID (0010,0020) with its issuer
    (IssuerOfPatientID (0010,0021)); the same pair is in the record's ``objects``.
    """

    # No foreign key constraint in the database: the trail writes a record and its patient rows in
    # one statement, and rows are only deleted by the purge, patients first; a constraint would
    # add a check per row at every audited commit.
    record = models.ForeignKey(AuditRecord, on_delete=models.DO_NOTHING, related_name="patients", db_constraint=False)
    patient_id = models.CharField(max_length=64)
    issuer = models.CharField(max_length=64, blank=True, default="")

    objects = _AppendOnlyQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["patient_id", "issuer"], name="audit_patient")]
        default_permissions = ("view",)

    def __str__(self) -> str:
        return f"audit {self.record_id} names a patient"


class AuditExport(models.Model):
    """The durable cursor of the export to one Audit Record Repository (IHE ATNA ITI-20).

    ``last_seq``: every sealed record up to this ``seq`` was accepted by the repository (or cannot
    be a valid audit message at all, which the exporter logs by seq); the export goes on after it,
    in seq order.  The cursor moves only past what was sent, in the transaction that holds this
    row's lock, so that one exporter at a time sends and a crash between sending and moving the
    cursor sends a batch again (at least once) rather than skipping one.  ``failing_since`` is set
    at the first failed send and cleared by the next success; ``last_error`` says why (a
    destination and a socket error, never record content).

    Unlike the records, this row changes: it is a position in the trail, not part of it.
    """

    name = models.CharField(max_length=255, unique=True, help_text="the repository, host:port")
    url = models.CharField(max_length=500, help_text="AUDIT_REPOSITORY_URL it was last sent to")
    last_seq = models.BigIntegerField(default=0, help_text="every record up to this seq is exported")
    last_sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")
    failing_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"audit export to {self.name} after seq {self.last_seq}"


class ChainCheck(models.Model):
    """The result of one verification of the whole hash chain (:func:`audit.chain.verify`, run by
    the periodic task ``audit.verify`` or ``manage.py verify_audit``), so that the audit page
    shows the chain's state without recomputing it on every view.  ``breaks`` keeps the first
    breaks found (kind, seq, record id, message: no patient data)."""

    checked_at = models.DateTimeField(db_index=True)
    checked = models.BigIntegerField()
    break_count = models.IntegerField()
    breaks = models.JSONField(default=list, blank=True)
    seconds = models.FloatField(default=0.0)

    class Meta:
        default_permissions = ("view",)

    @property
    def ok(self) -> bool:
        return self.break_count == 0

    def __str__(self) -> str:
        return f"chain check {self.checked_at:%Y-%m-%d %H:%M}: {self.checked} records, {self.break_count} breaks"
