"""The built-in image viewer: OHIF Viewer v3, from the prebuilt ``dist/`` of its published npm
package ``@ohif/app``, served by the engine under ``/viewer/`` and pointed at the engine's own
DICOMweb (``/dicomweb/``, DICOM PS3.18).

The package is pinned by version and by its registry integrity (the SHA-512 of the tarball, as
``package-lock.json`` records it).  ``install()`` (``manage.py install_viewer``, run by ``make run``
and ``make test``) fetches the tarball with ``npm pack``, refuses one whose SHA-512 differs,
unpacks ``package/dist/`` into ``VIEWER_DIR/ohif-<version>/`` and adapts it to its mount point.
Nothing of it is kept in git.  When that directory is already complete it does nothing.

Adapting the prebuilt bundle (it is built for the root of a site, ``PUBLIC_URL=/``):

- every bundle's webpack public path ``"/"`` becomes ``/viewer/`` (chunks, workers, codecs);
- ``index.html``: the absolute ``/...`` asset references gain the ``/viewer`` prefix; its two
  inline scripts (``window.PUBLIC_URL``, ``browserImportFunction``) move into the file
  ``engine-boot.js``, so that the page runs under a policy without ``'unsafe-inline'`` scripts;
  the service-worker script (which only unregisters workers) is left out;
- ``app-config.js`` is not the package's: the engine writes it per request (``app_config``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@ohif/app"
VERSION = "3.13.2"
#: ``npm view @ohif/app@3.13.2 dist.integrity``
INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
#: The URL path the viewer is served under (``worklist.urls``).
MOUNT = "/viewer/"
#: Written last: its presence (holding the integrity) says the directory is complete.
MARKER = ".installed"
BOOT_SCRIPT = "engine-boot.js"
#: The package's own configuration file; the engine answers this path itself.
CONFIG_FILE = "app-config.js"


class InstallError(Exception):
    """The viewer could not be installed (no npm, no registry, a tarball that fails its check)."""


def installed_dir(viewer_dir: Path) -> Path:
    return Path(viewer_dir) / f"ohif-{VERSION}"


def is_installed(viewer_dir: Path) -> bool:
    marker = installed_dir(viewer_dir) / MARKER
    return marker.is_file() and marker.read_text().strip() == INTEGRITY


def integrity_of(path: Path) -> str:
    """The Subresource-Integrity form npm records (``sha512-`` + base64 of the SHA-512)."""
    digest = hashlib.sha512()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def install(viewer_dir: Path, *, npm: str = "npm", log=print) -> bool:
    """Install the pinned viewer into ``viewer_dir`` (False: it already was).  Other versions
    installed there are removed once the new one is complete."""
    viewer_dir = Path(viewer_dir)
    if is_installed(viewer_dir):
        return False
    if shutil.which(npm) is None:
        raise InstallError(f"{npm} is not on PATH: install Node.js and npm to install the built-in viewer")
    viewer_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=viewer_dir, prefix=".download-") as tmp:
        log(f"fetching {PACKAGE}@{VERSION} from the npm registry")
        result = subprocess.run([npm, "pack", f"{PACKAGE}@{VERSION}", "--json", "--pack-destination", tmp],
                                capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise InstallError(f"npm pack {PACKAGE}@{VERSION} failed: {result.stderr.strip()[-500:]}")
        tarballs = list(Path(tmp).glob("*.tgz"))
        if len(tarballs) != 1:
            raise InstallError(f"npm pack left {len(tarballs)} tarballs")
        actual = integrity_of(tarballs[0])
        if actual != INTEGRITY:
            raise InstallError(f"{PACKAGE}@{VERSION}: integrity {actual} is not the pinned {INTEGRITY}")
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(tarballs[0]) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("package/dist/")]
            tar.extractall(unpacked, members=members, filter="data")
        dist = unpacked / "package" / "dist"
        if not (dist / "index.html").is_file():
            raise InstallError(f"{PACKAGE}@{VERSION} carries no prebuilt dist/index.html")
        adapt(dist)
        (dist / MARKER).write_text(INTEGRITY)
        target = installed_dir(viewer_dir)
        if target.exists():
            shutil.rmtree(target)
        dist.rename(target)
    for other in viewer_dir.glob("ohif-*"):
        if other != target and other.is_dir():
            shutil.rmtree(other, ignore_errors=True)
    log(f"{PACKAGE}@{VERSION} installed in {target}")
    return True


_PUBLIC_PATH = re.compile(rb'__webpack_require__\.p = "/";')
_MICROSCOPY = b"'/dicom-microscopy-viewer/"
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)
_SERVICE_WORKER = re.compile(r'<script[^>]*src="/init-service-worker\.js"[^>]*>\s*</script>')
_ROOT_REFERENCE = re.compile(r'(href|src|content)="/(?!/)')


def adapt(dist: Path) -> None:
    """Point the prebuilt bundle, made for the root of a site, at ``MOUNT`` (see the module)."""
    for script in dist.rglob("*.js"):
        data = script.read_bytes()
        changed = _PUBLIC_PATH.sub(f'__webpack_require__.p = "{MOUNT}";'.encode(), data)
        changed = changed.replace(_MICROSCOPY, f"'{MOUNT}dicom-microscopy-viewer/".encode())
        if changed != data:
            script.write_bytes(changed)
    index = (dist / "index.html").read_text(encoding="utf-8")
    inline = [body for body in _INLINE_SCRIPT.findall(index)]
    boot = ";\n".join(body.replace('window.PUBLIC_URL="/"', f'window.PUBLIC_URL="{MOUNT}"') for body in inline)
    (dist / BOOT_SCRIPT).write_text(boot + ";\n", encoding="utf-8")
    index = _SERVICE_WORKER.sub("", index)
    index = _INLINE_SCRIPT.sub("", index)
    index = _ROOT_REFERENCE.sub(lambda m: f'{m.group(1)}="{MOUNT}', index)
    index = index.replace("<title>", f'<script src="{MOUNT}{BOOT_SCRIPT}"></script><title>', 1)
    (dist / "index.html").write_text(index, encoding="utf-8")


def app_config(dicomweb_root: str) -> str:
    """The viewer's ``app-config.js``: one DICOMweb data source, the engine's (QIDO-RS and WADO-RS
    at ``dicomweb_root``, PS3.18 10.6 and 10.4; frames and metadata by WADO-RS), no study list
    (the reading worklist is the engine's) and nothing loaded from other sites."""
    config = {
        "name": "engine",
        "routerBasename": MOUNT.rstrip("/"),
        "extensions": [],
        "modes": [],
        # No guided tour over the first study a radiologist opens (a Global customization wins
        # over the mode's).
        "customizationService": [{"ohif.tours": {"$set": []}}],
        "showStudyList": False,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "showErrorDetails": "production",
        "defaultDataSourceName": "engine",
        "dataSources": [{
            "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
            "sourceName": "engine",
            "configuration": {
                "friendlyName": "PACS engine",
                "name": "engine",
                "qidoRoot": dicomweb_root,
                "wadoRoot": dicomweb_root,
                "wadoUriRoot": f"{dicomweb_root}/wado",
                "qidoSupportsIncludeField": True,
                "imageRendering": "wadors",
                "thumbnailRendering": "wadors",
                "enableStudyLazyLoad": True,
                "supportsFuzzyMatching": False,
                "supportsWildcard": True,
                "staticWado": False,
                "singlepart": "bulkdata,video",
                "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                "omitQuotationForMultipartRequest": True,
            },
        }],
    }
    return f"window.config = {json.dumps(config, indent=1)};\n"
