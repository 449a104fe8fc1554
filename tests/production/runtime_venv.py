"""A virtual environment with the runtime requirements alone, as production installs them.

Built by the Makefile's own ``venv`` target (the one ``make run`` uses) into
``.venv-runtime/<key>``, where the key is a digest of ``requirements.txt`` and the interpreter's
version: a change of either builds a new one, an unchanged one is reused.  Nothing of
``requirements-dev.txt`` is installed, so an import that only works because a test or
development package brought a library along fails here as it would in the image.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOME = ROOT / ".venv-runtime"


def key() -> str:
    digest = hashlib.sha256((ROOT / "requirements.txt").read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()[:16]


def clean_env(**extra: str) -> dict[str, str]:
    """An environment with nothing of the test run in it: no DATABASE_URL, broker, Django settings,
    make flags or virtual environment; only what a shell of the operator's would have."""
    keep = ("HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "TMPDIR")
    env = {name: os.environ[name] for name in keep if name in os.environ}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
    env.update(extra)
    return env


def ensure() -> Path:
    """The runtime environment's directory, built once per requirements.txt."""
    HOME.mkdir(exist_ok=True)
    venv = HOME / key()
    with open(HOME / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / ".run-installed").exists():
            shutil.rmtree(venv, ignore_errors=True)
            python = shutil.which("python3.11") or sys._base_executable
            result = subprocess.run(["make", "venv", f"VENV={venv}", f"PYTHON={python}"], cwd=ROOT,
                                    env=clean_env(), capture_output=True, text=True, timeout=900)
            if result.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                raise RuntimeError(f"make venv failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        for old in HOME.iterdir():
            if old.is_dir() and old != venv:
                shutil.rmtree(old, ignore_errors=True)
    return venv
