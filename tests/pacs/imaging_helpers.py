"""Fixtures shared by the image tests: the engine's AE on an ephemeral port, a private store."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE

from pacs.dimse.server import start_server


@pytest.fixture
def store_dir(tmp_path, settings):
    settings.STORAGE_DIR = tmp_path / "storage"
    settings.STORAGE_DIR.mkdir()
    return settings.STORAGE_DIR


@pytest.fixture
def engine(transactional_db, store_dir, settings):
    """The engine's AE (``run_dicom``) on 127.0.0.1, ephemeral port; stopped after the test."""
    settings.DICOM_AE_TITLE = "PACS"
    server = start_server("127.0.0.1", 0)
    try:
        yield server
    finally:
        server.shutdown()


def port(server) -> int:
    return server.server_address[1]


def pynetdicom_store(server_port: int, datasets, *, called="PACS"):
    """Send datasets with pynetdicom as the SCU (for cases dcmtk refuses to send); returns statuses."""
    ae = AE(ae_title="MODALITY")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", server_port, ae_title=called)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def new_uid() -> str:
    return generate_uid()
