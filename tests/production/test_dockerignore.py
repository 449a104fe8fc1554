"""The image's build context (.dockerignore, read as docker reads it): everything the Dockerfile
copies and every file of the engine is in it; local state, secrets, caches and the
development-only trees are not."""

from __future__ import annotations

from tests.production import deployment
from tests.production.deployment import ROOT, dockerignored

RUNTIME_TREES = (
    "accounts",
    "audit",
    "audit_export",
    "hl7gateway",
    "monitoring",
    "pacs",
    "project",
    "ris",
    "worklist",
    "templates",
)


def test_the_files_the_dockerfile_copies_by_name_are_in_the_context():
    sources = deployment.dockerfile_copy_sources()
    assert {"requirements.txt", "worklist/ohif.py", "."} <= set(sources), sources
    for source in sources:
        if source != ".":
            assert (ROOT / source).exists() and not dockerignored(source), source


def test_every_tracked_file_of_the_engine_is_in_the_context():
    runtime = [
        str(p.relative_to(ROOT))
        for tree in RUNTIME_TREES
        for p in (ROOT / tree).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and "node_modules" not in p.parts
    ]
    assert len(runtime) > 100
    left_out = [p for p in runtime if dockerignored(p)]
    assert not left_out, left_out
    for top in ("manage.py", "gunicorn.conf.py", "requirements.txt", ".env.example", "README.md", "Procfile"):
        assert not dockerignored(top), top


def test_local_state_secrets_caches_and_development_trees_stay_out():
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        ".venv-runtime/abc/bin/python",
        "var/store/1.2/3.dcm",
        "var/viewer/index.html",
        ".env",
        ".env.production",
        "docker/.env",
        "project/.env",
        "pacs/__pycache__/models.cpython-311.pyc",
        "pacs/dimse/__pycache__/qr.cpython-311.pyc",
        "worklist/static/x/node_modules/a/index.js",
        "node_modules/a/index.js",
        "tests/conftest.py",
        "bench/out/run.jsonl",
        "bench/store.py",
        ".pytest_cache/v/cache",
        ".ruff_cache/x",
        ".import_linter_cache/x",
        "scripts/ensure-services.sh",
    ):
        assert dockerignored(path), path


def test_the_matcher_reads_patterns_as_docker_does(monkeypatch):
    monkeypatch.setattr(
        deployment,
        "dockerignore_patterns",
        lambda: [("*.log", False), ("**/tmp", False), ("keep/**", False), ("keep/this.txt", True)],
    )
    assert dockerignored("a.log") and not dockerignored("sub/a.log")  # * stays within one element
    assert dockerignored("tmp/x") and dockerignored("a/b/tmp/x")
    assert dockerignored("keep/that.txt") and not dockerignored("keep/this.txt")
