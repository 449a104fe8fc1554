"""Indexing a received instance (``pacs.services.images.store_instance``) against the real
database, on both writers: PostgreSQL's statements and the ORM's.  What they write is the
same; each test pins one rule where they once differed."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from pacs import storage
from pacs.models import Instance, Series, StoreConflict, Study
from pacs.services import images
from pacs.services.index_plan import TOUCH_EVERY
from tests.support.dicom import new_uid

pytestmark = pytest.mark.django_db(transaction=True)

DIGEST = "ab" * 32


@pytest.fixture(autouse=True, params=["postgresql", "portable"])
def index_path(request, monkeypatch):
    """PostgreSQL's reader and writer, or the ORM's (as on SQLite), on the test database."""
    monkeypatch.setattr(images, "FAST_INDEX", request.param == "postgresql")
    monkeypatch.setattr(images, "_SERIES_CACHE", {})
    return request.param


def attrs(study_uid: str, series_uid: str, sop_uid: str | None = None, **extra) -> images.InstanceAttributes:
    values = {"patient_id": "P1", "modality": "CT", "calling_ae_title": "MODALITY", "dataset_sha256": DIGEST, **extra}
    return images.InstanceAttributes(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", sop_instance_uid=sop_uid or new_uid(),
        study_instance_uid=study_uid, series_instance_uid=series_uid, transfer_syntax_uid="1.2.840.10008.1.2.1",
        **values)


def store(a: images.InstanceAttributes) -> images.StoreResult:
    temporary = storage.incoming_dir() / f"{new_uid()}{storage.RECEIVED_SUFFIX}"
    temporary.write_bytes(b"\0" * 512)
    return images.store_instance(a, temporary)


@pytest.fixture
def clock(monkeypatch):
    """timezone.now under the test's control (an hour back, moved by hand)."""
    now = [timezone.now() - dt.timedelta(hours=1)]
    monkeypatch.setattr(timezone, "now", lambda: now[0])
    return now


def test_last_received_at_moves_once_touch_every_has_passed(store_dir, clock):
    study_uid, series_uid = new_uid(), new_uid()
    first = store(attrs(study_uid, series_uid))
    started = clock[0]
    clock[0] += TOUCH_EVERY / 2
    store(attrs(study_uid, series_uid))
    assert Study.objects.get(pk=first.study_id).last_received_at == started
    clock[0] += TOUCH_EVERY * 2
    store(attrs(study_uid, series_uid))
    assert Study.objects.get(pk=first.study_id).last_received_at == clock[0]
    assert Instance.objects.filter(study_id=first.study_id).count() == 3


def test_a_resend_whose_file_was_lost_changes_nothing_in_the_index(store_dir):
    """PS3.4 B.4.1.3: an identical resend is Success and changes nothing -- also when it reaches
    the index through the remembered series (the stored file missing, its path free)."""
    study_uid, series_uid = new_uid(), new_uid()
    first = attrs(study_uid, series_uid)
    stored = store(first)
    store(attrs(study_uid, series_uid))  # the series is remembered now
    hour_ago = timezone.now() - dt.timedelta(hours=1)
    Study.objects.filter(pk=stored.study_id).update(last_received_at=hour_ago)
    before = Study.objects.filter(pk=stored.study_id).values().get()
    path = store_dir / Instance.objects.get(pk=stored.instance_id).path
    path.unlink()

    again = store(first)
    assert (again.instance_id, again.created) == (stored.instance_id, False)
    assert Study.objects.filter(pk=stored.study_id).values().get() == before
    assert Instance.objects.count() == 2 and not StoreConflict.objects.exists()
    assert path.is_file()


@pytest.fixture
def refused_instance():
    """The database refuses the INSERT of one SOP Instance UID (a trigger raising an error)."""
    if connection.vendor != "postgresql":
        pytest.skip("a PL/pgSQL trigger")
    uid = new_uid()
    with connection.cursor() as cursor:
        cursor.execute(f"""CREATE FUNCTION test_refuse_instance() RETURNS trigger AS $$
            BEGIN IF NEW.sop_instance_uid = '{uid}' THEN RAISE EXCEPTION 'refused by the test'; END IF;
            RETURN NEW; END $$ LANGUAGE plpgsql""")
        cursor.execute(f"CREATE TRIGGER test_refuse_instance BEFORE INSERT ON {Instance._meta.db_table}"
                       " FOR EACH ROW EXECUTE FUNCTION test_refuse_instance()")
    try:
        yield uid
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER test_refuse_instance ON {Instance._meta.db_table}")
            cursor.execute("DROP FUNCTION test_refuse_instance()")


def test_a_series_whose_first_instance_was_rolled_back_takes_the_next_one(store_dir, refused_instance):
    """What the index remembers of a series comes from committed rows only: the first instance
    of a new series fails (and with it the series row); the next instance of that series is
    stored, as is the first one sent again."""
    study_uid, old_series, new_series = new_uid(), new_uid(), new_uid()
    store(attrs(study_uid, old_series))
    with pytest.raises(DatabaseError):
        store(attrs(study_uid, new_series, sop_uid=refused_instance))
    assert not Series.objects.filter(series_instance_uid=new_series).exists()

    result = store(attrs(study_uid, new_series))
    assert result.created
    assert Instance.objects.get(pk=result.instance_id).series.series_instance_uid == new_series
    assert list(store_dir.rglob(f"{refused_instance}.dcm")) == []


def test_the_usual_instance_is_one_statement_on_postgresql(store_dir, index_path):
    """An instance of a series this process indexed before, in a receiving study: one statement
    (and its transaction) on PostgreSQL; read, then written, by the ORM."""
    study_uid, series_uid = new_uid(), new_uid()
    store(attrs(study_uid, series_uid))
    store(attrs(study_uid, series_uid))
    with CaptureQueriesContext(connection) as queries:
        store(attrs(study_uid, series_uid))
    statements = [q["sql"] for q in queries.captured_queries if q["sql"] not in ("BEGIN", "COMMIT")]
    if index_path == "postgresql":
        assert len(statements) == 1, statements
    else:
        assert len(statements) <= 5, statements


def indexed(study_uid: str) -> dict:
    """A study as indexed, without ids, UIDs and times."""
    from ris.models import StatusChange

    study = Study.objects.get(study_instance_uid=study_uid)
    return {
        "study": Study.objects.filter(pk=study.pk).values(
            "modalities_in_study", "status", "patient_id", "calling_ae_title", "match_method").get(),
        "series": sorted(Series.objects.filter(study=study).values_list("modality", "series_number")),
        "instances": Instance.objects.filter(study=study).count(),
        "changes": list(StatusChange.objects.filter(entity="study", object_id=study.pk).values_list(
            "from_status", "to_status", "actor")),
    }


def test_both_writers_index_the_same_rows(store_dir, index_path, monkeypatch):
    """New study, new series with another modality, a late instance re-opening the completed
    study: the same rows from PostgreSQL's writer and from the ORM's."""
    from pacs.models import images as im

    if index_path == "portable":
        pytest.skip("compares both writers in one run")
    seen = []
    for fast in (True, False):
        monkeypatch.setattr(images, "FAST_INDEX", fast)
        images._SERIES_CACHE.clear()
        study_uid, first, second = new_uid(), new_uid(), new_uid()
        store(attrs(study_uid, first, series_number=1))
        store(attrs(study_uid, first, series_number=1))
        store(attrs(study_uid, second, series_number=2, modality="MR"))
        Study.objects.filter(study_instance_uid=study_uid).update(status=im.COMPLETE)
        late = store(attrs(study_uid, first, series_number=1))
        assert late.reopened and late.created
        seen.append(indexed(study_uid))
    assert seen[0] == seen[1]
    assert seen[0]["study"]["modalities_in_study"] == "CT\\MR" and seen[0]["instances"] == 4
    assert seen[0]["changes"] == [(im.COMPLETE, im.RECEIVING, "MODALITY")]
