"""DIMSE answers are counted per calling AE (``monitoring.dicom_log``): in memory first, then
written by a DIMSE database thread at most every ``COUNT_WRITE_DELAY`` seconds, so that a burst
of answers becomes one upsert, not a commit per answer; ``pacs.dimse.db.flush()`` writes them
at once, and nothing counted is lost between two writes."""

from __future__ import annotations

import threading
import time

import pytest

from monitoring import dicom_log
from monitoring.models import DicomOperation
from pacs.dimse import db

pytestmark = pytest.mark.django_db(transaction=True)


def _count(calling: str, operation: str = "C-FIND") -> int:
    return sum(DicomOperation.objects.filter(calling_ae_title=calling, operation=operation).values_list(
        "count", flat=True))


def test_a_burst_of_answers_is_written_in_one_transaction(monkeypatch):
    writes = []
    real = dicom_log.record_many
    monkeypatch.setattr(dicom_log, "record_many", lambda counts: (writes.append(dict(counts)), real(counts)))
    for _ in range(50):
        dicom_log.record_quietly("BURST", "C-FIND", 0x0000)
    dicom_log.record_quietly("BURST", "C-FIND", 0xA900)
    db.flush()
    assert len(writes) == 1 and sorted(count for count, _ in writes[0].values()) == [1, 50]
    assert _count("BURST") == 51


def test_counts_are_written_without_a_flush_within_the_delay():
    dicom_log.record_quietly("LATER", "C-STORE", 0x0000)
    deadline = time.monotonic() + dicom_log.COUNT_WRITE_DELAY + 5
    while _count("LATER", "C-STORE") != 1:
        assert time.monotonic() < deadline, "the count was not written"
        time.sleep(0.05)


def test_answers_counted_from_many_threads_while_writes_happen_are_all_written():
    def answer(n: int) -> None:
        for _ in range(n):
            dicom_log.record_quietly("MANY", "C-ECHO", 0x0000)
            time.sleep(0.001)

    threads = [threading.Thread(target=answer, args=(300,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    db.flush()
    assert _count("MANY", "C-ECHO") == 1200
