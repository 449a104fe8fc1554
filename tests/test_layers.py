"""The layer contract (``[tool.importlinter]`` in pyproject.toml, checked by ``make test``): it
covers every package of the engine, and it fails when a lower layer imports a higher one."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def _layers() -> list[set[str]]:
    (contract,) = [c for c in CONFIG["contracts"] if c["type"] == "layers"]
    return [{name.strip() for name in layer.replace(":", "|").split("|")} for layer in contract["layers"]]


def test_every_package_of_the_engine_is_in_one_layer():
    apps = {app.split(".")[0] for app in settings.INSTALLED_APPS if (ROOT / app.split(".")[0]).is_dir()}
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench", "docs"}
    assert apps <= packages
    assert set(CONFIG["root_packages"]) == packages
    placed = [name for layer in _layers() for name in layer]
    assert sorted(placed) == sorted(packages)  # each once
    assert "ignore_imports" not in CONFIG["contracts"][0]


@pytest.mark.socket  # runs lint-imports on a copy of the tree
@pytest.mark.parametrize(("module", "upward"), [
    ("ris/services/orders.py", "from worklist import models as _upward"),
    ("project/settings.py", "import pacs as _upward"),
    ("pacs/services/images.py", "from hl7gateway import oru as _sideways"),
    ("audit/trail.py", "from ris import models as _sideways"),
    ("ris/services/orders.py", "from audit import models as _sideways"),
    ("project/auditing/recording.py", "from audit import trail as _upward"),
])
def test_the_contract_fails_on_an_import_that_points_up_or_sideways(tmp_path, module, upward):
    for name in CONFIG["root_packages"]:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    lint = [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"]
    clean = subprocess.run(lint, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    with open(tmp_path / module, "a") as f:
        f.write(f"\n{upward}  # noqa\n")
    broken = subprocess.run(lint, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "BROKEN" in broken.stdout and "1 broken" in broken.stdout
