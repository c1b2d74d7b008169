"""Containers for real: the image is built once per session (scripts/build-image.sh, podman's layer cache
keeps rebuilds to the source layers) and every test here runs it under podman as root.

Skipped, with the reason, where podman cannot run containers: not root, or no podman. On the project's
machines (root, podman, runc) they run in `make test`.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/edgepart:test"


def container_problems() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("needs root (rootful podman)")
    if shutil.which("podman") is None:
        problems.append("needs podman (apt-get install podman buildah runc)")
    return problems


PROBLEMS = container_problems()
needs_podman = pytest.mark.skipif(bool(PROBLEMS), reason="containers: " + "; ".join(PROBLEMS))


def containers_conf(directory: Path) -> Path:
    """What scripts/podman-env.sh writes: runc (crun fails in cgroup hybrid mode) and ulimits within the
    host's hard limits (podman's defaults exceed them and every run fails in setrlimit)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    lines = ["[containers]", f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc=32768:32768"]']
    if shutil.which("runc"):
        lines += ["[engine]", 'runtime = "runc"']
    path = directory / "containers.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class Podman:
    env: dict[str, str]
    image: str
    build_s: float

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                                check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                                 f"{result.stderr[-3000:]}")
        return result


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    """The image, built once for the session (from a locally made base where no registry has one)."""
    if PROBLEMS:
        pytest.skip("containers: " + "; ".join(PROBLEMS))
    conf = containers_conf(tmp_path_factory.mktemp("podman"))
    env = {**os.environ, "CONTAINERS_CONF": str(conf), "IMAGE": IMAGE, "ENGINE": "podman"}
    start = time.monotonic()
    build = subprocess.run(["bash", str(ROOT / "scripts" / "build-image.sh")], env=env, capture_output=True,
                           text=True, timeout=1800, check=False)
    if build.returncode != 0:
        raise AssertionError(f"scripts/build-image.sh failed ({build.returncode}):\n{build.stdout[-4000:]}\n"
                             f"{build.stderr[-4000:]}")
    yield Podman(env=env, image=IMAGE, build_s=time.monotonic() - start)
