"""Query/Retrieve SCP (PS3.4 Annex C) with dcmtk's own tools: findscu (-S Study Root, -P Patient
Root) at every level, movescu to dcmtk's storescp declared as a DICOM node, getscu on the same
association.  The index is filled through the store SCP (storescu), as a modality fills it."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from audit import trail
from audit.models import AuditRecord
from pacs.models import DicomNode, Study
from project.auditing import events
from tests.support.dicom import (
    OTHER,
    associate_from,
    echoscu,
    port_of,
    qr_findscu,
    retrieve_tool,
    start_storescp,
)
from tests.support.net import free_port
from tests.support.orthanc import storescu, write_study

pytestmark = [pytest.mark.socket, pytest.mark.django_db(transaction=True)]

S1, S2, S3 = "1.2.826.0.1.3680043.8.498.71", "1.2.826.0.1.3680043.8.498.72", "1.2.826.0.1.3680043.8.498.73"
S1_CT, S1_PR = "1.2.826.0.1.3680043.8.498.71.1", "1.2.826.0.1.3680043.8.498.71.2"


@pytest.fixture
def held(engine, tmp_path):
    """Two patients, three studies, stored by storescu: S1 (CT series of 3 + PR series of 1),
    S2 (MR, 2), S3 (CT, 2, the other patient).  WS1 may query/retrieve (not store)."""
    sent = {}
    studies = [
        (S1, S1_CT, 3, "CT", "PAT001", "DOE^JANE", dt.date(2026, 11, 20), "ACC1"),
        (S1, S1_PR, 1, "PR", "PAT001", "DOE^JANE", dt.date(2026, 11, 20), "ACC1"),
        (S2, None, 2, "MR", "PAT001", "DOE^JANE", dt.date(2026, 11, 25), "ACC2"),
        (S3, None, 2, "CT", "PAT002", "ROE^RICHARD", dt.date(2026, 10, 1), "ACC3"),
    ]
    for n, (study, series, count, modality, pid, name, date, accession) in enumerate(studies):
        paths = write_study(tmp_path / f"in{n}", count, study_instance_uid=study, series_instance_uid=series,
                            modality=modality, patient_id=pid, patient_name=name, study_date=date,
                            accession_number=accession)
        proc = storescu(port_of(engine), paths)
        assert proc.returncode == 0, proc.stderr
        for path in paths:
            ds = dcmread(path)
            sent[ds.SOPInstanceUID] = ds
    DicomNode.objects.create(ae_title="WS1", host="127.0.0.1", allow_query_retrieve=True, allow_store=False)
    return sent


def _find(engine, model, keys, tmp_path, **kwargs):
    proc, answers = qr_findscu(engine, model, keys, tmp_path / "rsp", **kwargs)
    assert proc.returncode == 0, proc.stderr
    return proc, answers


# --- C-FIND ---------------------------------------------------------------------------------------
def test_study_root_study_level_with_wildcard_date_range_and_counts(engine, held, tmp_path):
    _, answers = _find(engine, "-S", [
        "QueryRetrieveLevel=STUDY", "PatientName=DOE*", "StudyDate=20261101-20261130", "StudyInstanceUID=",
        "AccessionNumber=", "ModalitiesInStudy=", "NumberOfStudyRelatedSeries=", "NumberOfStudyRelatedInstances=",
        "PatientID=", "StudyID=", "RetrieveAETitle="], tmp_path)
    assert [a.StudyInstanceUID for a in answers] == [S1, S2]  # S3 is the other patient, and in October
    first = answers[0]
    assert first.QueryRetrieveLevel == "STUDY" and first.AccessionNumber == "ACC1" and first.PatientID == "PAT001"
    assert first.NumberOfStudyRelatedSeries == 2 and first.NumberOfStudyRelatedInstances == 4
    assert sorted(first.ModalitiesInStudy) == ["CT", "PR"]
    assert first.StudyID == "" and first.RetrieveAETitle == "PACS"  # not held: returned empty
    assert {e.keyword for e in first} == {
        "QueryRetrieveLevel", "PatientName", "StudyDate", "StudyInstanceUID", "AccessionNumber", "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "PatientID", "StudyID", "RetrieveAETitle"}


@pytest.mark.parametrize("keys,expected", [
    (["StudyInstanceUID=" + S1 + "\\" + S3], [S3, S1]),  # list of UIDs, in study date order
    (["PatientName=?OE^*"], [S3, S1, S2]),  # ? and * wildcards
    (["PatientName=doe^jane"], [S1, S2]),  # names without regard to case
    (["StudyDate=-20261015"], [S3]),  # open range
    (["StudyDate=20261125"], [S2]),
    (["ModalitiesInStudy=PR"], [S1]),  # one of the study's modalities
    (["ModalitiesInStudy=M*"], [S2]),
    (["AccessionNumber=ACC?", "PatientID=PAT002"], [S3]),
    (["StudyTime=1000-1100"], [S3, S1, S2]),
    (["StudyTime=1100-"], []),
])
def test_study_level_matching(engine, held, tmp_path, keys, expected):
    _, answers = _find(engine, "-S", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID=", *keys], tmp_path)
    assert [a.StudyInstanceUID for a in answers] == expected


def test_series_and_image_levels_below_a_study(engine, held, tmp_path):
    _, series = _find(engine, "-S", ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={S1}", "SeriesInstanceUID=",
                                     "Modality=", "NumberOfSeriesRelatedInstances="], tmp_path)
    assert sorted((s.Modality, s.NumberOfSeriesRelatedInstances) for s in series) == [("CT", 3), ("PR", 1)]
    assert all(s.StudyInstanceUID == S1 for s in series)  # the unique key above comes back
    _, ct = _find(engine, "-S", ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={S1}", "Modality=C?"], tmp_path)
    assert [s.SeriesInstanceUID for s in ct] == [S1_CT]

    _, images = _find(engine, "-S", ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={S1}",
                                     f"SeriesInstanceUID={S1_CT}", "SOPInstanceUID=", "SOPClassUID=",
                                     "InstanceNumber="], tmp_path)
    assert [i.InstanceNumber for i in images] == [1, 2, 3]
    assert {i.SOPInstanceUID for i in images} <= set(held) and all(i.SOPClassUID == CTImageStorage for i in images)
    _, second = _find(engine, "-S", ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={S1}",
                                     f"SeriesInstanceUID={S1_CT}", "InstanceNumber=2"], tmp_path)
    assert len(second) == 1 and second[0].SOPInstanceUID == images[1].SOPInstanceUID


def test_patient_root_patient_and_study_levels(engine, held, tmp_path):
    _, patients = _find(engine, "-P", ["QueryRetrieveLevel=PATIENT", "PatientID=", "PatientName=",
                                       "NumberOfPatientRelatedStudies=", "NumberOfPatientRelatedInstances="], tmp_path)
    assert [(p.PatientID, str(p.PatientName), p.NumberOfPatientRelatedStudies, p.NumberOfPatientRelatedInstances)
            for p in patients] == [("PAT001", "DOE^JANE", 2, 6), ("PAT002", "ROE^RICHARD", 1, 2)]
    _, studies = _find(engine, "-P", ["QueryRetrieveLevel=STUDY", "PatientID=PAT001", "StudyInstanceUID=",
                                      "StudyDate="], tmp_path)
    assert [(s.StudyInstanceUID, s.StudyDate) for s in studies] == [(S1, "20261120"), (S2, "20261125")]


def test_a_query_that_matches_nothing_is_success_without_pending(engine, held, tmp_path):
    proc, answers = _find(engine, "-S", ["QueryRetrieveLevel=STUDY", "PatientName=NOBODY*"], tmp_path)
    assert answers == []
    assert "Success" in proc.stderr + proc.stdout or proc.returncode == 0


@pytest.mark.parametrize("model,keys", [
    ("-P", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID="]),  # no PatientID above the study level
    ("-S", ["QueryRetrieveLevel=SERIES", "StudyInstanceUID=1.2.3*"]),  # a wildcard in the unique key above
    ("-S", ["QueryRetrieveLevel=STUDY", "SOPInstanceUID="]),  # a key below the query level
    ("-S", ["QueryRetrieveLevel=PATIENT", "PatientID="]),  # no patient level in Study Root
    ("-S", ["QueryRetrieveLevel=STUDY", "StudyDate=2026-11-20"]),  # not a DA range
])
def test_an_identifier_outside_the_model_is_refused_with_a900(engine, held, tmp_path, model, keys):
    proc, answers = qr_findscu(engine, model, keys, tmp_path / "rsp", extra=("-d",))
    assert answers == []
    assert "0xa900" in (proc.stdout + proc.stderr).lower()


def test_queries_are_on_the_audit_trail(engine, held, tmp_path):
    _find(engine, "-S", ["QueryRetrieveLevel=STUDY", "PatientID=PAT002", "StudyInstanceUID="], tmp_path)
    trail.flush()
    record = AuditRecord.records.filter(event_id=events.QUERY.value).latest("pk")
    query = next(o for o in record.objects if o["type"] == "query")
    assert record.actor == "WS1" and query["id"] == StudyRootQueryRetrieveInformationModelFind
    assert query["detail"]["keys"] == {"PatientID": "PAT002", "QueryRetrieveLevel": "STUDY"}
    assert [(p.patient_id, p.issuer) for p in record.patients.all()] == [("PAT002", "HOSP")]


# --- C-MOVE ---------------------------------------------------------------------------------------
@pytest.fixture
def move_destination(tmp_path):
    """Start dcmtk's storescp on a free port, declared as the DICOM node STORESCP (keyword
    arguments: the node's other fields; ``extra``: storescp's options); it is stopped at the
    test's end.  Returns the directory it writes what it receives to."""
    started = []

    def start(*, extra=(), **node):
        port = free_port()
        DicomNode.objects.create(ae_title="STORESCP", host="127.0.0.1", port=port, **node)
        started.append(start_storescp(port, tmp_path / "moved", extra=extra))
        return tmp_path / "moved"

    yield start
    for scp in started:
        scp.terminate()
        scp.wait(10)


def _movescu(engine, model: str, keys: list[str], destination: str = "STORESCP", *extra: str):
    return retrieve_tool("movescu", engine, model, keys, extra=[*extra, "-aem", destination])


def _same_pixels(received: list, sent: dict, *, as_stored: bool = True) -> None:
    """Each file received has the pixel data sent, byte for byte (and, ``as_stored``, in the
    transfer syntax it was stored in)."""
    for ds in received:
        assert ds.PixelData == sent[ds.SOPInstanceUID].PixelData
        if as_stored:
            assert ds.file_meta.TransferSyntaxUID == sent[ds.SOPInstanceUID].file_meta.TransferSyntaxUID


def test_movescu_sends_a_study_to_a_declared_storescp(engine, held, move_destination):
    moved = move_destination(allow_store=False)
    proc = _movescu(engine, "-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={S1}\\{S2}"])
    assert proc.returncode == 0, proc.stderr
    received = [dcmread(p) for p in moved.iterdir()]
    assert len(received) == 6
    _same_pixels(received, held)
    assert "Pending" in proc.stdout + proc.stderr  # a pending response per sub-operation
    trail.flush()
    record = AuditRecord.records.filter(event_id=events.INSTANCES_TRANSFERRED.value, action=events.READ).latest("pk")
    assert record.actor == "WS1" and record.destination == "STORESCP"
    assert sorted((o["id"], o["detail"]["instances"]) for o in record.objects if o["type"] == "study") == [
        (S1, 4), (S2, 2)]
    assert [(p.patient_id, p.issuer) for p in record.patients.all()] == [("PAT001", "HOSP")]


def test_a_destination_without_the_stored_transfer_syntax_gets_the_instances_re_encoded(engine, held,
                                                                                         move_destination):
    moved = move_destination(extra=("+xi",))  # implicit VR little endian only
    proc = _movescu(engine, "-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={S3}"])
    assert proc.returncode == 0, proc.stderr
    received = [dcmread(p) for p in moved.iterdir()]
    assert len(received) == 2
    assert {ds.file_meta.TransferSyntaxUID for ds in received} == {"1.2.840.10008.1.2"}
    _same_pixels(received, held, as_stored=False)


def test_movescu_series_and_images(engine, held, move_destination):
    moved = move_destination()
    image = next(uid for uid, ds in held.items() if ds.SeriesInstanceUID == S1_CT and ds.InstanceNumber == 2)
    series = _movescu(engine, "-S", ["QueryRetrieveLevel=SERIES", f"StudyInstanceUID={S1}",
                                     f"SeriesInstanceUID={S1_PR}"])
    one = _movescu(engine, "-P", ["QueryRetrieveLevel=IMAGE", "PatientID=PAT001", f"StudyInstanceUID={S1}",
                                  f"SeriesInstanceUID={S1_CT}", f"SOPInstanceUID={image}"])
    assert series.returncode == 0 and one.returncode == 0, series.stderr + one.stderr
    received = {dcmread(p).SOPInstanceUID for p in moved.iterdir()}
    pr = {uid for uid, ds in held.items() if ds.SeriesInstanceUID == S1_PR}
    assert received == pr | {image}


@pytest.mark.parametrize("destination,node", [
    ("NOWHERE", None),  # no such node
    ("NET", {"host": "10.1.4.0/24", "port": 104}),  # a network is no address to send to
    ("NOPORT", {"host": "127.0.0.1", "port": None}),
    ("OFF", {"host": "127.0.0.1", "port": 104, "enabled": False}),
])
def test_an_unknown_move_destination_is_a801(engine, held, destination, node):
    if node is not None:
        DicomNode.objects.create(ae_title=destination, **node)
    proc = _movescu(engine, "-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={S1}"], destination, "-d")
    assert "0xa801" in (proc.stdout + proc.stderr).lower()


def test_an_unreachable_destination_fails_every_sub_operation(engine, held):
    DicomNode.objects.create(ae_title="GONE", host="127.0.0.1", port=free_port())
    proc = _movescu(engine, "-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={S2}"], "GONE", "-d")
    assert "0xa702" in (proc.stdout + proc.stderr).lower()


# --- C-GET ----------------------------------------------------------------------------------------
def test_getscu_receives_a_study_on_its_own_association(engine, held, tmp_path):
    out = tmp_path / "got"
    out.mkdir()
    proc = retrieve_tool("getscu", engine, "-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={S3}"],
                         extra=["-od", str(out)])
    assert proc.returncode == 0, proc.stderr
    received = [dcmread(p) for p in out.iterdir()]
    assert len(received) == 2
    # getscu offers each storage SOP class with several transfer syntaxes in one context; the
    # engine's first choice is implicit VR little endian, into which the stored file is re-encoded
    assert {ds.file_meta.TransferSyntaxUID for ds in received} == {"1.2.840.10008.1.2"}
    _same_pixels(received, held, as_stored=False)


def test_a_node_that_may_retrieve_but_not_store_cannot_store(engine, held, tmp_path):
    paths = write_study(tmp_path / "extra", 1, study_instance_uid="1.2.826.0.1.3680043.8.498.79")
    proc = storescu(port_of(engine), paths, calling="WS1")
    assert proc.returncode != 0 or "0x0211" in (proc.stdout + proc.stderr).lower() or "refused" in proc.stderr.lower()
    assert not Study.objects.filter(study_instance_uid="1.2.826.0.1.3680043.8.498.79").exists()


# --- who may query and retrieve -------------------------------------------------------------------
def test_an_undeclared_calling_ae_from_elsewhere_is_refused(engine, held):
    assoc, rejection = associate_from(engine, "STRANGER", [StudyRootQueryRetrieveInformationModelFind], source=OTHER)
    assert not assoc.is_established and rejection == (1, 1, 3)


def test_a_node_without_the_grant_gets_no_query_retrieve_context(engine, held):
    DicomNode.objects.create(ae_title="CT1", host="127.0.0.1", allow_query_retrieve=False)
    assoc, rejection = associate_from(engine, "CT1", [StudyRootQueryRetrieveInformationModelFind,
                                                      StudyRootQueryRetrieveInformationModelGet], source="127.0.0.1")
    try:
        assert rejection is None
        assert not assoc.is_established or not assoc.accepted_contexts
    finally:
        if assoc.is_established:
            assoc.release()


# --- the database failing -------------------------------------------------------------------------
@pytest.fixture
def study_table_away(held):
    """The image index's study table renamed (an error inside the database) for the test's body."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute('ALTER TABLE "pacs_study" RENAME TO "pacs_study_away"')
    yield
    with connection.cursor() as cursor:
        cursor.execute('ALTER TABLE "pacs_study_away" RENAME TO "pacs_study"')


def test_a_database_failure_is_a_failure_status_never_success(engine, study_table_away, tmp_path):
    proc, answers = qr_findscu(engine, "-S", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID="], tmp_path / "rsp",
                               extra=("-d",))
    assert answers == [] and "0xa700" in (proc.stdout + proc.stderr).lower()
    proc = retrieve_tool("getscu", engine, "-S", ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={S1}"],
                         extra=["-d", "-od", str(tmp_path)])
    assert "0xa701" in (proc.stdout + proc.stderr).lower()


def test_c_cancel_stops_a_c_get_between_sub_operations(engine, held):
    """pynetdicom as the SCU (dcmtk's getscu sends no C-CANCEL): C-CANCEL after the first pending
    response; the C-GET ends with 0xFE00 and the remaining count, fewer than all sent."""
    from pynetdicom import AE, build_role, evt

    stored = []

    def on_store(event):
        stored.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    ae = AE(ae_title="WS1")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port_of(engine), ae_title="PACS",
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = [S1, S2, S3]
    statuses = []
    try:
        context_id = next(cx.context_id for cx in assoc.accepted_contexts
                          if cx.abstract_syntax == StudyRootQueryRetrieveInformationModelGet)
        for status, _identifier in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet,
                                                    msg_id=7):
            statuses.append(status)
            if status.Status == 0xFF00 and len(statuses) == 1:
                assoc.send_c_cancel(7, context_id)
    finally:
        assoc.release()
    final = statuses[-1]
    assert final.Status == 0xFE00
    assert final.NumberOfRemainingSuboperations > 0 and len(stored) < 8
    assert final.NumberOfCompletedSuboperations == len(stored)


def test_a_retrieval_that_names_nothing_held_is_success_with_no_sub_operation(engine, held):
    DicomNode.objects.create(ae_title="STORESCP", host="127.0.0.1", port=free_port())  # never reached
    proc = _movescu(engine, "-S", ["QueryRetrieveLevel=STUDY", "StudyInstanceUID=1.2.3.4.5"], "STORESCP", "-d")
    assert proc.returncode == 0, proc.stderr
    out = (proc.stdout + proc.stderr).lower()
    assert "dimse status                  : 0x0000" in out and "pending" not in out
    trail.flush()
    record = AuditRecord.records.filter(event_id=events.INSTANCES_TRANSFERRED.value, action=events.READ).latest("pk")
    assert record.destination == "STORESCP" and record.outcome == events.SUCCESS


@pytest.mark.parametrize("scp_options", [(), ("--fork",)], ids=["one-association-at-a-time", "forking"])
def test_two_concurrent_moves_of_a_study_to_one_destination_both_succeed(engine, held, tmp_path, scp_options):
    """Two movescu at once, each asking for S1 and S2 to the same storescp: each gets its own
    final Success with 6 completed sub-operations and none failed, and the destination receives
    every instance once per move (storescp +uf keeps each copy in a file of its own; a storescp
    without --fork takes one association at a time, so the engine's second association waits for
    the first)."""
    from concurrent.futures import ThreadPoolExecutor

    port = free_port()
    DicomNode.objects.create(ae_title="STORESCP", host="127.0.0.1", port=port)
    scp = start_storescp(port, tmp_path / "moved", extra=("+uf", *scp_options))
    try:
        with ThreadPoolExecutor(2) as pool:
            runs = [pool.submit(retrieve_tool, "movescu", engine, "-S",
                                ["QueryRetrieveLevel=STUDY", f"StudyInstanceUID={S1}\\{S2}"],
                                extra=["-d", "-aem", "STORESCP"]) for _ in range(2)]
            procs = [run.result() for run in runs]
    finally:
        scp.terminate()
        scp.wait(10)
    for proc in procs:
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-3000:]
        final = out[out.rindex("Received Final Move Response"):]
        assert re.search(r"DIMSE Status\s*:\s*0x0000: Success", final), final[:2000]
        assert re.search(r"Completed Suboperations\s*:\s*6\b", final), final[:2000]
        assert re.search(r"Failed Suboperations\s*:\s*0\b", final), final[:2000]
    received = [dcmread(p).SOPInstanceUID for p in (tmp_path / "moved").iterdir()]
    wanted = {uid for uid, ds in held.items() if ds.StudyInstanceUID in (S1, S2)}
    assert len(wanted) == 6 and sorted(received) == sorted(list(wanted) * 2)
    assert echoscu(engine, aet="WS1").returncode == 0  # the engine still answers
