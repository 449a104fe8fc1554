"""audit.trail: record (in the caller's transaction) and record_soon (the writer thread)."""

from __future__ import annotations

import os
import time

import pytest
from django.db import connection, connections, transaction

from audit import trail
from audit.models import AuditPatient, AuditRecord
from project.auditing import events


def _query(**kw):
    args = {"action": events.READ, "actor": "CT1", "actor_kind": events.DICOM, "source_address": "10.1.2.3"}
    args.update(kw)
    return args


def _wait_for(condition, seconds=30.0, what="condition"):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def test_record_names_its_patients_in_objects_and_in_the_index(db):
    rec = trail.record(events.PATIENT_RECORD, action=events.UPDATE, actor="alice", actor_kind=events.USER,
                       patients=[("PAT-1", "HOSP"), ("PAT-1", "HOSP"), ("PAT-2", "")],
                       objects=[{"type": "order", "id": 42, "issuer": "EHR"}],
                       detail={"before": {"name": "A"}, "after": {"name": "B"}})
    stored = AuditRecord.records.get(pk=rec.pk)
    assert stored.event_id == "110110" and stored.action == "U" and stored.outcome == 0
    assert stored.objects == [{"type": "patient", "id": "PAT-1", "issuer": "HOSP"},
                              {"type": "patient", "id": "PAT-2", "issuer": ""},
                              {"type": "order", "id": "42", "issuer": "EHR"}]
    assert stored.seq is None and stored.record_hash == ""
    who_saw = AuditRecord.records.filter(patients__patient_id="PAT-1", patients__issuer="HOSP")
    assert list(who_saw.values_list("actor", flat=True)) == ["alice"]
    assert AuditPatient.objects.filter(record=rec).count() == 2


def test_record_commits_and_rolls_back_with_the_callers_transaction(db):
    class Refused(Exception):
        pass

    with pytest.raises(Refused), transaction.atomic():
        trail.record(events.ORDER_RECORD, action=events.CREATE, actor="EHR^HOSP", actor_kind=events.HL7,
                     patients=[("PAT-9", "HOSP")])
        assert AuditRecord.records.count() == 1
        raise Refused
    assert AuditRecord.records.count() == 0
    assert AuditPatient.objects.count() == 0


@pytest.mark.parametrize("bad, message", [
    ({"action": "X"}, "action"),
    ({"outcome": 3}, "outcome"),
    ({"actor_kind": "robot"}, "actor_kind"),
    ({"actor": ""}, "actor"),
    ({"event_type": "999999"}, "event_type"),
    ({"objects": [{"id": "1"}]}, "participant object"),
    ({"patients": [("", "HOSP")]}, "patient_id"),
    ({"detail": ["not", "a", "dict"]}, "detail"),
])
def test_bad_arguments_are_refused_with_a_clear_error_and_write_nothing(db, bad, message):
    with pytest.raises(ValueError, match=message):
        trail.record(events.QUERY, **_query(**bad))
    with pytest.raises(ValueError, match=message):
        trail.record_soon(events.QUERY, **_query(**bad))
    with pytest.raises(ValueError, match="event_id"):
        trail.record("110999", **_query())
    assert AuditRecord.records.count() == 0


def test_audit_enabled_off_writes_nothing(db, settings):
    settings.AUDIT_ENABLED = False
    assert trail.record(events.QUERY, **_query()) is None
    trail.record_soon(events.QUERY, **_query())
    assert trail.flush(timeout=10)
    assert AuditRecord.records.count() == 0


def test_record_soon_is_written_and_committed_by_the_writer(transactional_db, other_client):
    before = trail._writer().written
    for n in range(1200):
        trail.record_soon(events.QUERY, **_query(detail={"n": n}), patients=[(f"PAT-{n % 7}", "HOSP")])
    assert trail.flush(timeout=60)
    assert trail._writer().written - before == 1200
    # Committed: another client sees every record and its patient rows.
    with other_client.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT detail->>'n') FROM audit_auditrecord")
        assert cur.fetchone() == (1200, 1200)
        cur.execute("SELECT count(*) FROM audit_auditpatient WHERE patient_id = 'PAT-0'")
        assert cur.fetchone() == (172,)


# Values the writer's JSON documents must carry through unchanged (json.dumps escapes them; the
# server's jsonb_to_recordset unescapes them, RFC 8259 section 7): double quotes, backslashes, text
# that reads like an escape, every control character JSON escapes except NUL (a PostgreSQL text or
# jsonb value cannot hold U+0000), Latin-1, CJK and a character outside the BMP (a surrogate pair
# in \\u notation).
NAME = "MÜLLER^Zoë"
QUOTED = 'a "quoted\\back\\slash" detail \\'
LOOKS_ESCAPED = "\\u0041 \\n \\\" \\/"
CONTROLS = "".join(chr(c) for c in range(1, 0x20)) + "\x7f"
OTHER_SCRIPTS = "山田^太郎 𝄞 Ωmega"


def test_the_writers_batch_keeps_quotes_backslashes_control_characters_and_non_ascii(transactional_db,
                                                                                       other_client):
    given = [
        dict(action=events.READ, actor=f'Dr. "Zoë" O\'Brien \\ {NAME}', actor_kind=events.USER,
             source_address="2001:db8::1", destination=QUOTED, patients=[(NAME, 'HOSP "Nord"\\')],
             objects=[{"type": "study", "id": "1.2.3", "description": OTHER_SCRIPTS}],
             detail={"PatientName": NAME, "note": QUOTED, 'key "quoted\\"': LOOKS_ESCAPED,
                     "controls": CONTROLS, "nested": [{"x": QUOTED}, [NAME, 1, None, True]]}),
        dict(action=events.READ, actor=CONTROLS, actor_kind=events.DICOM, source_address=LOOKS_ESCAPED,
             patients=[(OTHER_SCRIPTS, NAME), ("PAT-2", "")], detail={"criteria": CONTROLS + QUOTED}),
        dict(action=events.READ, actor="CT1", actor_kind=events.DICOM, detail={}),
    ]
    writer = trail._writer()
    failures = writer.failures
    for args in given:
        trail.record_soon(events.QUERY, **args)
    assert trail.flush(timeout=30)
    assert writer.failures == failures  # written at the first attempt, not retried
    stored = {r.actor: r for r in AuditRecord.records.all()}
    assert sorted(stored) == sorted(args["actor"] for args in given)
    for args in given:
        record = stored[args["actor"]]
        patients = [{"type": "patient", "id": pid, "issuer": issuer} for pid, issuer in args["patients"]] \
            if "patients" in args else []
        assert (record.actor, record.actor_kind, record.source_address, record.destination) == (
            args["actor"], args["actor_kind"], args.get("source_address", ""), args.get("destination", ""))
        assert record.objects == patients + args.get("objects", [])
        assert record.detail == args["detail"]
        assert sorted(record.patients.values_list("patient_id", "issuer")) == sorted(args.get("patients", []))
    # The same bytes as seen by another client, not only through the ORM's JSON decoding.
    with other_client.cursor() as cur:
        cur.execute("SELECT detail->>'note', detail->>'controls', objects->1->>'description' FROM audit_auditrecord "
                    "WHERE id = %s", [stored[given[0]["actor"]].pk])
        assert cur.fetchone() == (QUOTED, CONTROLS, OTHER_SCRIPTS)


def test_a_nul_character_is_kept_as_a_replacement_character_and_blocks_no_batch(transactional_db):
    """U+0000 (from an HL7 field or a DICOM value) cannot be stored in PostgreSQL's text or jsonb:
    the record is written with U+FFFD in its place, by the writer thread and in the caller's
    transaction alike, and the records behind it in the same batch are written too."""
    writer = trail._writer()
    failures = writer.failures
    nul = "DOE\x00^JOHN"
    trail.record_soon(events.QUERY, action=events.READ, actor="CT\x001", actor_kind=events.DICOM,
                      source_address="10.0.0.1\x00", patients=[(nul, "HOSP\x00")],
                      objects=[{"type": "query", "id": "mwl\x00", "detail": {"k\x00": [nul]}}],
                      detail={"PatientName": nul})
    trail.record_soon(events.QUERY, **_query(detail={"n": "behind"}))
    assert trail.flush(timeout=30)
    assert writer.failures == failures  # written at the first attempt, not retried
    with transaction.atomic():
        trail.record(events.QUERY, action=events.READ, actor="rad1", actor_kind=events.USER,
                     detail={"criteria": nul}, patients=[(nul, "HOSP")])
    kept = "DOE\ufffd^JOHN"
    by_actor = {r.actor: r for r in AuditRecord.records.all()}
    dicom = by_actor["CT\ufffd1"]
    assert dicom.source_address == "10.0.0.1\ufffd" and dicom.detail == {"PatientName": kept}
    assert dicom.objects == [{"type": "patient", "id": kept, "issuer": "HOSP\ufffd"},
                             {"type": "query", "id": "mwl\ufffd", "detail": {"k\ufffd": [kept]}}]
    assert list(dicom.patients.values_list("patient_id", "issuer")) == [(kept, "HOSP\ufffd")]
    assert by_actor["rad1"].detail == {"criteria": kept}
    assert AuditRecord.records.filter(detail__n="behind").count() == 1


def test_a_full_queue_makes_the_caller_write_its_record_itself(transactional_db, other_client, settings):
    settings.AUDIT_QUEUE_SIZE = 2
    writer = trail._writer()
    with other_client.cursor() as cur:  # the writer's next batch waits for this lock (its patient rows)
        cur.execute("LOCK TABLE audit_auditpatient IN EXCLUSIVE MODE")
        trail.record_soon(events.QUERY, **_query(detail={"n": 1}), patients=[("PAT-1", "HOSP")])
        _wait_for(lambda: writer.pending() == 1 and not writer._buffer, what="the writer to take record 1")
        trail.record_soon(events.QUERY, **_query(detail={"n": 2}), patients=[("PAT-1", "HOSP")])
        trail.record_soon(events.QUERY, **_query(detail={"n": 3}), patients=[("PAT-1", "HOSP")])
        assert writer.pending() == 3
        trail.record_soon(events.QUERY, **_query(detail={"n": 4}))  # the buffer is full: written here, now
        assert list(AuditRecord.records.values_list("detail__n", flat=True)) == [4]
        other_client.rollback()
    assert trail.flush(timeout=30)
    assert sorted(AuditRecord.records.values_list("detail__n", flat=True)) == [1, 2, 3, 4]


def test_the_writer_survives_a_database_outage_and_writes_when_it_is_back(maintenance_client):
    name = connection.settings_dict["NAME"]
    writer = trail._writer()
    trail.record_soon(events.QUERY, **_query(detail={"n": 0}))
    assert trail.flush(timeout=30)  # the writer holds a connection now
    failures = writer.failures
    connections.close_all()
    with maintenance_client.cursor() as cur:
        cur.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            # Every session of the test database ends (the writer's among them); new ones are refused.
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])
            for n in (1, 2, 3):
                trail.record_soon(events.QUERY, **_query(detail={"n": n}))
            _wait_for(lambda: writer.failures >= failures + 3, what="the writer to fail three times")
            assert not trail.flush(timeout=0)  # still queued: the state now, no time allowed to pass
            assert writer.pending() == 3
            assert writer._thread.is_alive()
        finally:
            cur.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    assert trail.flush(timeout=30)
    assert sorted(AuditRecord.records.values_list("detail__n", flat=True)) == [0, 1, 2, 3]


def test_a_forked_child_starts_its_own_writer(transactional_db):
    trail.record_soon(events.QUERY, **_query(detail={"who": "parent"}))
    assert trail.flush(timeout=30)
    parent_writer = trail._writer()
    trail.record_soon(events.QUERY, **_query(detail={"who": "parent, queued at the fork"}))
    connections.close_all()  # no connection may be shared across a fork (project.prefork does the same)
    pid = os.fork()
    if pid == 0:  # the child: a prefork worker, say
        status = 1
        try:
            child_writer = trail._writer()
            trail.record_soon(events.QUERY, **_query(detail={"who": "child"}))
            ok = trail.flush(timeout=30)
            status = 0 if ok and child_writer is not parent_writer and child_writer.written == 1 else 2
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert trail.flush(timeout=30)
    assert sorted(AuditRecord.records.values_list("detail__who", flat=True)) == [
        "child", "parent", "parent, queued at the fork"]
