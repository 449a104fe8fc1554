"""The built-in viewer (worklist.ohif) without a browser: what the installer makes of OHIF's
prebuilt bundle, the files, configuration and policy the engine serves under /viewer/, and the
study page's link (the study, then the patient's other studies held here)."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from pacs.models import Prior, Series, Study
from project.access import PRIVACY_OFFICER, RADIOLOGIST
from project.csp import POLICY, VIEWER_POLICY
from tests.factories import reading as f
from worklist import ohif, selectors, views
from worklist.models import ReadingItem

BUNDLE = "app.bundle.0f6159c501addfe9.js"
# The shape of OHIF's prebuilt index.html (its inline scripts, root-absolute references).
INDEX = ('<!doctype html><html lang="en"><head><meta name="msapplication-TileImage" content="/assets/tile.png">'
         '<script>console.time("scriptToView"),window.PUBLIC_URL="/"</script>'
         '<link rel="manifest" href="/manifest.json"><script rel="preload" as="script" src="/app-config.js"></script>'
         '<script rel="preload" as="script" type="module" src="/init-service-worker.js"></script>'
         '<title>OHIF Viewer</title><script>function browserImportFunction(n){return import(n)}'
         f'window.PUBLIC_URL="/"</script><script defer src="/{BUNDLE}"></script>'
         '<link href="/app.bundle.css" rel="stylesheet"></head><body><div id="root"></div></body></html>')


def _dist(root):
    root.mkdir(parents=True)
    (root / "index.html").write_text(INDEX)
    (root / BUNDLE).write_text('(() => { __webpack_require__.p = "/"; })();\n'
                               "await window.browserImportFunction('/dicom-microscopy-viewer/x.min.js');")
    (root / "0ddf166f7a343eda.wasm").write_bytes(b"\0asm\1\0\0\0")
    (root / "assets").mkdir()
    (root / "assets" / "tile.png").write_bytes(b"\x89PNG")
    return root


def test_adapt_moves_the_prebuilt_viewer_to_its_mount_point(tmp_path):
    dist = _dist(tmp_path / "dist")
    ohif.adapt(dist)
    index = (dist / "index.html").read_text()
    assert "<script>" not in index  # no inline script left: none needs 'unsafe-inline'
    assert "init-service-worker" not in index
    assert re.findall(r'(?:src|href|content)="([^"]+)"', index) == [
        "/viewer/assets/tile.png", "/viewer/manifest.json", "/viewer/app-config.js", "/viewer/engine-boot.js",
        f"/viewer/{BUNDLE}", "/viewer/app.bundle.css"]
    boot = (dist / ohif.BOOT_SCRIPT).read_text()
    assert 'window.PUBLIC_URL="/viewer/"' in boot and "function browserImportFunction(n)" in boot
    assert 'window.PUBLIC_URL="/"' not in boot
    bundle = (dist / BUNDLE).read_text()
    assert '__webpack_require__.p = "/viewer/";' in bundle
    assert "'/viewer/dicom-microscopy-viewer/x.min.js'" in bundle


def test_app_config_points_at_the_engines_dicomweb():
    text = ohif.app_config("https://pacs.example/dicomweb")
    assert text.startswith("window.config = ") and text.rstrip().endswith(";")
    config = json.loads(text[len("window.config = "):].rstrip().rstrip(";"))
    assert config["routerBasename"] == "/viewer" and config["showStudyList"] is False
    [source] = config["dataSources"]
    assert config["defaultDataSourceName"] == source["sourceName"]
    assert source["configuration"]["qidoRoot"] == source["configuration"]["wadoRoot"] == "https://pacs.example/dicomweb"
    assert source["configuration"]["imageRendering"] == "wadors"


def test_viewer_file_stays_inside_its_directory(tmp_path):
    root = _dist(tmp_path / "ohif")
    (tmp_path / "secret.txt").write_text("not the viewer's")
    (root / ".installed").write_text(ohif.INTEGRITY)
    assert views._viewer_file(root, BUNDLE) == (root / BUNDLE).resolve()
    for path in ("../secret.txt", "assets/../../secret.txt", ".installed", "", "assets"):
        assert views._viewer_file(root, path) is None, path


@pytest.mark.socket
def test_install_refuses_a_tarball_that_is_not_the_pinned_one(tmp_path, monkeypatch):
    """The real ``npm pack`` of the pinned version, checked against another integrity."""
    monkeypatch.setattr(ohif, "INTEGRITY", "sha512-" + "A" * 86 + "==")
    with pytest.raises(ohif.InstallError, match="is not the pinned"):
        ohif.install(tmp_path, log=lambda _: None)
    assert list(tmp_path.iterdir()) == []  # nothing unpacked, nothing left behind
    assert not ohif.is_installed(tmp_path)


def test_install_viewer_command_without_npm(tmp_path, settings, monkeypatch, capsys):
    settings.VIEWER_DIR = tmp_path / "viewer"
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on it
    with pytest.raises(CommandError, match="npm is not on PATH"):
        call_command("install_viewer")
    call_command("install_viewer", "--if-npm")  # make run goes on without the viewer
    assert "built-in viewer not installed" in capsys.readouterr().err
    # Once installed, the command needs neither npm nor the registry.
    dist = _dist(ohif.installed_dir(settings.VIEWER_DIR))
    (dist / ohif.MARKER).write_text(ohif.INTEGRITY)
    call_command("install_viewer")


@pytest.fixture
def installed(tmp_path, settings):
    """A viewer directory as ``install`` leaves it, with a small synthetic bundle."""
    settings.VIEWER_DIR = tmp_path / "viewer"
    dist = _dist(ohif.installed_dir(settings.VIEWER_DIR))
    ohif.adapt(dist)
    (dist / ohif.MARKER).write_text(ohif.INTEGRITY)
    return dist


@pytest.mark.django_db
def test_viewer_pages_files_and_config_under_their_own_policy(client, installed):
    assert client.get("/viewer/viewer?StudyInstanceUIDs=1.2.3").status_code == 302  # login first
    client.force_login(f.user("rad", RADIOLOGIST))
    page = client.get("/viewer/viewer?StudyInstanceUIDs=1.2.3")
    assert page.status_code == 200 and b'src="/viewer/engine-boot.js"' in b"".join(page.streaming_content)
    assert page["Content-Security-Policy"] == VIEWER_POLICY and page["Cache-Control"] == "private, no-cache"
    config = client.get("/viewer/app-config.js")
    assert config["Content-Type"].startswith("text/javascript") and config["Cache-Control"] == "no-store"
    assert '"qidoRoot": "http://testserver/dicomweb"' in config.content.decode()
    assert config["Content-Security-Policy"] == VIEWER_POLICY
    bundle = client.get(f"/viewer/{BUNDLE}")
    assert bundle["Content-Type"] == "text/javascript" and "immutable" in bundle["Cache-Control"]
    assert client.get("/viewer/0ddf166f7a343eda.wasm")["Content-Type"] == "application/wasm"
    assert client.get("/viewer/no-such-chunk.js").status_code == 404
    marker = client.get("/viewer/.installed")  # never the install marker: the page instead
    assert ohif.INTEGRITY.encode() not in b"".join(marker.streaming_content)
    # Every other page keeps the strict policy.
    assert client.get(reverse("worklist:list"))["Content-Security-Policy"] == POLICY


@pytest.mark.django_db
def test_viewer_not_installed_or_not_for_this_role(client, settings, tmp_path):
    settings.VIEWER_DIR = tmp_path / "empty"
    client.force_login(f.user("rad", RADIOLOGIST))
    assert client.get("/viewer/viewer").status_code == 404
    client.force_login(f.user("privacy", PRIVACY_OFFICER))
    assert client.get("/viewer/viewer").status_code == 403


def _held(uid: str, patient_id: str, *, issuer: str = "HOSP", study_date: dt.date | None = None,
          series: tuple[tuple[str, int | None], ...] = ()) -> Study:
    study = Study.objects.create(study_instance_uid=uid, patient_id=patient_id, issuer_of_patient_id=issuer,
                                 study_date=study_date, last_received_at=timezone.now())
    for series_uid, number in series:
        Series.objects.create(study=study, series_instance_uid=series_uid, series_number=number)
    return study


@pytest.mark.django_db
def test_study_page_opens_the_study_and_its_ready_priors(client, installed, settings):
    """The viewer opens the study and the relevant priors chosen for its order (pacs.services.priors)
    that the engine holds: READY ones, newest first, at most VIEWER_PRIOR_STUDIES."""
    settings.VIEWER_URL_TEMPLATE = ""
    settings.VIEWER_PRIOR_STUDIES = 2
    rp = f.study(patient_name="PRIORS^CASE")
    other = f.study(patient_name="OTHER^CASE")
    item = ReadingItem.objects.get(requested_procedure=rp)
    client.force_login(f.user("rad", RADIOLOGIST))
    page = client.get(reverse("worklist:study", args=[rp.pk]))
    assert b'id="viewer-link"' not in page.content  # no images held yet: no viewer
    _held(rp.study_instance_uid, item.patient_id, study_date=dt.date(2026, 11, 1),
          series=(("1.9.2", 2), ("1.9.1", 1), ("1.9.0", None)))
    for uid, year, status, procedure in (("1.8.2020", 2020, "READY", rp), ("1.8.2024", 2024, "READY", rp),
                                         ("1.8.2025", 2025, "READY", rp),
                                         ("1.8.2026-fetching", 2026, "IN_PROGRESS", rp),  # not held yet
                                         ("1.8.other-order", 2026, "READY", other)):  # another order's
        Prior.objects.create(requested_procedure=procedure, study_instance_uid=uid, patient_id=item.patient_id,
                             study_date=dt.date(year, 1, 1), status=status)
    assert selectors.viewer_studies(item) == [rp.study_instance_uid, "1.8.2025", "1.8.2024"]
    page = client.get(reverse("worklist:study", args=[rp.pk]))
    href = re.search(r'href="([^"]+)"[^>]*id="viewer-link"', page.content.decode()).group(1)
    assert href == (f"/viewer/viewer?StudyInstanceUIDs={rp.study_instance_uid},1.8.2025,1.8.2024"
                    "&amp;initialSeriesInstanceUID=1.9.1")
    # A site's own viewer wins.
    settings.VIEWER_URL_TEMPLATE = "https://viewer.example/open?study={StudyInstanceUID}"
    assert selectors.viewer_url(item) == f"https://viewer.example/open?study={rp.study_instance_uid}"
