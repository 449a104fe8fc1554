"""The database failing under the DICOM AE: a clear negative answer, never Success.

- the database unreachable when an association arrives: rejected transient (the modality retries);
- a query or an MPPS failing inside the database: 0xC000 (C-FIND) / 0x0110 (N-CREATE), nothing
  stored, and the next request after recovery is served.
"""

from __future__ import annotations

import pytest
from django.db import connection, connections
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep, ModalityWorklistInformationFind, Verification

from pacs.dimse import db
from pacs.models import PerformedProcedureStep
from tests.factories import make_patient, make_step
from tests.support.dicom import mwl_find, port_of, worklist_query
from tests.support.mpps import n_create_dataset
from tests.support.net import free_port


def _associate(server):
    ae = AE(ae_title="MOD1")
    for cx in (Verification, ModalityWorklistInformationFind, ModalityPerformedProcedureStep):
        ae.add_requested_context(cx)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae.associate("127.0.0.1", port_of(server), ae_title="PACS")


@pytest.fixture
def renamed(dicom_server):
    """Rename a table for the duration of a block (an error inside the database), then restore it."""
    done = []

    def rename(table):
        with connection.cursor() as cursor:
            cursor.execute(f'ALTER TABLE "{table}" RENAME TO "{table}_away"')
        done.append(table)

    yield rename
    for table in done:
        with connection.cursor() as cursor:
            cursor.execute(f'ALTER TABLE "{table}_away" RENAME TO "{table}"')


def test_database_unreachable_rejects_association_transiently(dicom_server, caplog):
    settings_dict = connections.settings["default"]
    port = settings_dict["PORT"]
    db.stop()  # drop the handlers' open connections
    settings_dict["PORT"] = str(free_port())  # nobody listens there
    try:
        assoc = _associate(dicom_server)
        assert assoc.is_rejected
        assert assoc.acceptor.primitive.result == 0x02  # rejected-transient: try again later
        assert "association refused: node lookup failed" in caplog.text
    finally:
        settings_dict["PORT"] = port
        db.stop()
    assoc = _associate(dicom_server)  # recovered
    assert assoc.is_established
    assoc.release()


def test_query_failing_in_the_database_answers_c000(dicom_server, renamed):
    make_step(make_patient("DOE^JOHN", "P1"), accession="ACC1")
    renamed("ris_scheduledprocedurestep")
    assoc = _associate(dicom_server)
    try:
        answers = mwl_find(assoc, worklist_query())
        assert answers == [(0xC000, None)]
    finally:
        assoc.release()


def test_query_served_after_the_database_recovers(dicom_server):
    make_step(make_patient("DOE^JOHN", "P1"), accession="ACC1")
    with connection.cursor() as cursor:
        cursor.execute('ALTER TABLE "ris_scheduledprocedurestep" RENAME TO "ris_sps_away"')
    assoc = _associate(dicom_server)
    try:
        assert mwl_find(assoc, worklist_query())[-1][0] == 0xC000
        with connection.cursor() as cursor:
            cursor.execute('ALTER TABLE "ris_sps_away" RENAME TO "ris_scheduledprocedurestep"')
        ds = worklist_query()
        ds.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate = ""
        answers = mwl_find(assoc, ds)
        assert [s for s, _ in answers] == [0xFF00, 0x0000]
    finally:
        assoc.release()


def test_mpps_failing_in_the_database_answers_0110_and_stores_nothing(dicom_server, renamed):
    step = make_step(make_patient("DOE^JOHN", "P1"), accession="ACC1")
    renamed("ris_statuschange")  # the step's transition cannot be recorded: the whole N-CREATE rolls back
    assoc = _associate(dicom_server)
    try:
        status, _ = assoc.send_n_create(n_create_dataset(step), ModalityPerformedProcedureStep, generate_uid())
        assert status.Status == 0x0110
    finally:
        assoc.release()
    step.refresh_from_db()
    assert step.status == "SCHEDULED"
    assert not PerformedProcedureStep.objects.exists()
