"""A real Orthanc as the VNA, and helpers to make synthetic studies (no real patient data).

``OrthancProcess`` starts Debian's Orthanc with its own JSON configuration in a temporary
directory (ephemeral HTTP and DICOM ports, no remote access, no authentication), knows
the engine's AE (DicomModalities) so it can send the storage commitment N-EVENT-REPORT,
and is checked through its REST API.

With ``tls`` (an ``OrthancTLS``) its DICOM port speaks only DICOM TLS (Orthanc 1.10.1:
DicomTlsEnabled, DicomTlsCertificate, DicomTlsPrivateKey, DicomTlsTrustedCertificates,
DicomTlsRemoteCertificateRequired) and, with ``https``, its HTTP server (with the DICOMweb
plug-in) only HTTPS (SslEnabled, SslCertificate: certificate and key in one PEM file).  The
engine's entry in DicomModalities says ``UseDicomTls`` per ``engine_tls``: the storage
commitment report goes to the engine's clear port unless told otherwise.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.support.net import free_port

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
CT = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass(frozen=True)
class OrthancTLS:
    certificate: Path  # Orthanc's certificate (PEM)
    private_key: Path
    trusted: Path  # CA certificates its DICOM TLS peers' certificates must chain to
    remote_certificate_required: bool = False
    https: bool = False  # the HTTP server (REST, DICOMweb) over TLS too
    ca_file: Path | None = None  # for this test's own HTTPS requests to it


class OrthancProcess:
    def __init__(self, workdir: Path, *, aet: str = "ORTHANC", engine_aet: str = "PACS", engine_port: int = 0,
                 dicom_port: int | None = None, sync_storage: bool = True, lua: str = "", dicomweb: bool = False,
                 extra: dict | None = None, tls: OrthancTLS | None = None, engine_tls: bool = False):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = dicom_port or free_port()
        self.engine_aet = engine_aet
        self.engine_port = engine_port
        self.sync_storage = sync_storage
        self.lua = lua
        self.dicomweb = dicomweb
        self.extra = extra or {}
        self.tls = tls
        self.engine_tls = engine_tls
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls and self.tls.https else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    @property
    def verify(self):
        """``requests``' verify for this test's own REST calls."""
        return str(self.tls.ca_file or self.tls.trusted) if self.tls and self.tls.https else True

    def _tls_config(self) -> dict:
        if not self.tls:
            return {}
        cfg = {
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(self.tls.certificate),
            "DicomTlsPrivateKey": str(self.tls.private_key),
            "DicomTlsTrustedCertificates": str(self.tls.trusted),
            "DicomTlsRemoteCertificateRequired": self.tls.remote_certificate_required,
        }
        if self.tls.https:
            bundle = self.workdir / "https.pem"
            bundle.write_bytes(self.tls.certificate.read_bytes() + self.tls.private_key.read_bytes())
            cfg.update({"SslEnabled": True, "SslCertificate": str(bundle)})
        return cfg

    def config(self) -> dict:
        cfg = {
            "Name": "vna-test",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SyncStorageArea": self.sync_storage,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowStore": True,
            "StorageCommitmentReportsSize": 100,
            "DicomModalities": {self.engine_aet: {"AET": self.engine_aet, "Host": "127.0.0.1",
                                                  "Port": self.engine_port or 104, "UseDicomTls": self.engine_tls}},
            "Plugins": [DICOMWEB_PLUGIN] if self.dicomweb else [],
            "DicomWeb": {"Enable": self.dicomweb, "Root": "/dicom-web/"},
            "HttpServerEnabled": True,
            "StableAge": 3600,
            "ConcurrentJobs": 1,
            "HttpThreadsCount": 4,
            "DicomThreadsCount": 4,
        }
        cfg.update(self._tls_config())
        if self.lua:
            (self.workdir / "filter.lua").write_text(self.lua)
            cfg["LuaScripts"] = [str(self.workdir / "filter.lua")]
        cfg.update(self.extra)
        return cfg

    def start(self, timeout: float = 30.0) -> OrthancProcess:
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(self.config(), indent=1))
        env = {**os.environ, "TCP_NODELAY": "1"}
        self.log = open(self.workdir / "orthanc.log", "ab")
        self.process = subprocess.Popen([ORTHANC, str(path)], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.workdir / 'orthanc.log').read_text()[-2000:]}")
            try:
                # 401: up, and asking for the credentials it was configured with.
                if requests.get(f"{self.url}/system", timeout=1, verify=self.verify).status_code in (200, 401):
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("Orthanc did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def get(self, path: str):
        r = requests.get(f"{self.url}{path}", timeout=10, verify=self.verify)
        r.raise_for_status()
        return r.json()

    def count_instances(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def sop_instance_uids(self) -> list[str]:
        out = []
        for oid in self.get("/instances"):
            tags = self.get(f"/instances/{oid}/simplified-tags")
            out.append(tags["SOPInstanceUID"])
        return out

    def studies(self, study_instance_uid: str) -> list[dict]:
        """The studies Orthanc holds under this Study Instance UID, each with its patient's main
        tags (``PatientMainDicomTags``: PatientName, PatientID, ...), as its REST API returns them."""
        r = requests.post(f"{self.url}/tools/find", json={"Level": "Study", "Expand": True,
                                                           "Query": {"StudyInstanceUID": study_instance_uid}},
                          timeout=10, verify=self.verify)
        r.raise_for_status()
        return r.json()

    def instance_tags(self, sop_instance_uid: str) -> dict:
        found = requests.post(f"{self.url}/tools/lookup", data=sop_instance_uid, timeout=10, verify=self.verify).json()
        oid = next(f["ID"] for f in found if f["Type"] == "Instance")
        return self.get(f"/instances/{oid}/simplified-tags")


def make_instance(*, study_instance_uid: str, series_instance_uid: str | None = None,
                  sop_instance_uid: str | None = None, sop_class_uid: str = CT, modality: str = "CT",
                  accession_number: str = "", patient_id: str = "PAT001", issuer_of_patient_id: str = "HOSP",
                  patient_name: str = "TEST^SYNTHETIC", birth_date: str = "19700101", sex: str = "O",
                  study_date: dt.date | None = None, instance_number: int = 1, rows: int = 16, columns: int = 16,
                  bits: int = 16, study_description: str = "", body_part_examined: str = "") -> Dataset:
    """A synthetic image (random pixels) with the identifying attributes the tests need."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid or generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_instance_uid
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = issuer_of_patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    ds.AccessionNumber = accession_number
    ds.StudyDate = (study_date or dt.date.today()).strftime("%Y%m%d")
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.Modality = modality
    ds.SeriesNumber = 1
    if study_description:
        ds.StudyDescription = study_description
    if body_part_examined:
        ds.BodyPartExamined = body_part_examined
    ds.InstanceNumber = instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = random.Random(instance_number).randbytes(rows * columns * (bits // 8))
    return ds


def write_study(directory: Path, count: int, **kwargs) -> list[Path]:
    """``count`` instances of one series written as DICOM files (for storescu)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    series = kwargs.pop("series_instance_uid", None) or generate_uid()
    for n in range(1, count + 1):
        ds = make_instance(series_instance_uid=series, instance_number=n, **kwargs)
        path = directory / f"{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def storescu(port: int, paths: list[Path], *, called: str = "PACS", calling: str = "MODALITY",
             extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """dcmtk's storescu (full path: pynetdicom installs a script of the same name)."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    cmd = ["/usr/bin/storescu", "-v", "-aet", calling, "-aec", called, *extra, "127.0.0.1", str(port), *map(str, paths)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
