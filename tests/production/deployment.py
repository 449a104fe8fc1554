"""What the deployment files say: the Procfile's processes, docker/compose.yaml's services
(command, environment, healthcheck) and docker/Dockerfile's instructions, read as the tools
that run them read them (honcho, docker compose, docker build)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROCESS_TYPES = ("web", "mllp", "dicom", "worker", "beat")


def procfile() -> dict[str, str]:
    """{process type: command line} of the Procfile."""
    out = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, command = line.split(":", 1)
            out[name.strip()] = command.strip()
    return out


@dataclass
class Service:
    name: str
    command: list[str]
    environment: dict[str, str]
    healthcheck: list[str] | None
    uses_engine_image: bool


def compose() -> dict[str, Service]:
    """The services of docker/compose.yaml (YAML merge keys resolved as compose does)."""
    data = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = {}
    for name, spec in data["services"].items():
        test = (spec.get("healthcheck") or {}).get("test")
        if test and test[0] == "CMD":
            test = test[1:]
        services[name] = Service(
            name=name,
            command=list(spec.get("command") or []),
            environment={k: str(v) for k, v in (spec.get("environment") or {}).items()},
            healthcheck=test,
            uses_engine_image=spec.get("image") == "radiology-engine:latest",
        )
    return services


@dataclass
class Dockerfile:
    env: dict[str, str] = field(default_factory=dict)
    run: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    expose: list[int] = field(default_factory=list)
    workdir: str = ""


def dockerfile() -> Dockerfile:
    """ENV, RUN, CMD, EXPOSE and WORKDIR of docker/Dockerfile (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", (ROOT / "docker" / "Dockerfile").read_text())
    out = Dockerfile()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ENV":
            for token in shlex.split(rest):
                name, _, value = token.partition("=")
                out.env[name] = value
        elif instruction == "RUN":
            out.run.append(rest.strip())
        elif instruction == "CMD":
            out.cmd = json.loads(rest)
        elif instruction == "EXPOSE":
            out.expose = [int(p) for p in rest.split()]
        elif instruction == "WORKDIR":
            out.workdir = rest.strip()
    return out


def documented_settings() -> set[str]:
    """The names .env.example documents (``# NAME=`` lines)."""
    return set(re.findall(r"^# ([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))


def dockerignore_patterns() -> list[tuple[str, bool]]:
    """The .dockerignore at the build context's root (the repository's): (pattern, exception)
    pairs in file order, comments and blank lines dropped, each pattern cleaned as docker does
    (a leading ``/`` or ``./`` and a trailing ``/`` removed)."""
    out = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line[1:].strip() if exception else line
        pattern = re.sub(r"^(\./|/)+", "", pattern).rstrip("/")
        out.append((pattern, exception))
    return out


def _pattern_regex(pattern: str) -> re.Pattern:
    """Docker's match: Go's filepath.Match (``*`` and ``?`` within one path element) with ``**``
    for any number of elements."""
    parts, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            parts.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            parts.append("[^/]")
            i += 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(parts) + r"\Z")


def dockerignored(path: str) -> bool:
    """Whether ``path`` (relative to the context) stays out of the build context: the last
    pattern that matches the path or one of its parent directories decides."""
    elements = path.split("/")
    prefixes = ["/".join(elements[: n + 1]) for n in range(len(elements))]
    ignored = False
    for pattern, exception in dockerignore_patterns():
        regex = _pattern_regex(pattern)
        if any(regex.match(prefix) for prefix in prefixes):
            ignored = not exception
    return ignored


def dockerfile_copy_sources() -> list[str]:
    """The context paths the Dockerfile's COPY instructions read (``--from`` copies excluded)."""
    text = re.sub(r"\\\n", " ", (ROOT / "docker" / "Dockerfile").read_text())
    sources = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].upper() != "COPY" or any(w.startswith("--from") for w in words):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        sources += args[:-1]
    return sources
