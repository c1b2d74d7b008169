"""`edgepart up --runtime docker` for real, against podman's Docker-compatible API (DOCKER_HOST).

VGG-16 in three pipeline stages, three partition containers and a gateway on their own network:
exact answers, locked-down containers, a killed partition restarted by its restart policy, and
`down` leaving no container, network or volume behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Podman, needs_podman

pytestmark = needs_podman

NAME = "ctr-vgg3"
DEPLOYMENT = f"""\
apiVersion: edgepart.io/v1alpha1
kind: DNNDeployment
metadata:
  name: {NAME}
spec:
  model:
    name: vgg16
  objective: throughput
  solver: pipeline-dp
  devices:
    - {{name: edge-0, cpus: 1}}
    - {{name: edge-1, cpus: 1}}
    - {{name: edge-2, cpus: 1}}
  master: edge-0
  network: {{bandwidth: 1Gbps, latency: 1ms}}
  requestTimeout: 120s
"""
LABEL = f"edgepart.io/deployment={NAME}"


def edgepart(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgepart.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


class Deployment:
    def __init__(self, podman: Podman, env: dict[str, str], path: Path, url: str) -> None:
        self.podman, self.env, self.path, self.url = podman, env, path, url

    def infer_ok(self) -> str:
        result = edgepart(self.env, "infer", self.url, "--random", "--check", "--deployment", str(self.path))
        assert result.returncode == 0 and "OK: the deployment's output equals the whole model's" in result.stdout, (
            result.stdout + result.stderr)
        return result.stdout

    def inspect(self, container: str) -> dict[str, object]:
        info: dict[str, object] = json.loads(self.podman.run("inspect", container).stdout)[0]
        return info


@pytest.fixture(scope="module")
def deployment(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    directory = tmp_path_factory.mktemp("docker")
    sock = directory / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"], env=podman.env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        env = {**podman.env, "DOCKER_HOST": f"unix://{sock}", "EDGEPART_IMAGE": podman.image,
               "EDGEPART_RUN_DIR": str(directory / "run"),
               "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[2]),
                                                         os.environ.get("PYTHONPATH", "")) if p)}
        path = directory / "deployment.yaml"
        path.write_text(DEPLOYMENT)
        up = edgepart(env, "up", str(path), "--runtime", "docker", "--port", "0", "--timeout", "420")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        url = next(line.split()[-1] for line in up.stdout.splitlines() if line.startswith("gateway:"))
        yield Deployment(podman, env, path, url)
    finally:
        for kind in ("container", "network", "volume"):  # whatever a failed test left
            listed = podman.run(kind, "ls", "-q", "--filter", f"label={LABEL}", check=False).stdout.split()
            if listed:
                podman.run(kind, "rm", "-f", *listed, check=False)
        service.send_signal(signal.SIGTERM)
        service.wait(30)


def test_three_partition_containers_answer_exactly(deployment: Deployment) -> None:
    names = deployment.podman.run("ps", "--filter", f"label={LABEL}", "--format", "{{.Names}}").stdout.split()
    partitions = sorted(n for n in names if not n.endswith("-gateway"))
    assert len(partitions) == 3 and f"edgepart-{NAME}-gateway" in names, names
    deployment.infer_ok()
    status = edgepart(deployment.env, "status", NAME)
    assert status.returncode == 0 and "ready (containers)" in status.stdout, status.stdout + status.stderr


def test_containers_are_locked_down_and_limited(deployment: Deployment) -> None:
    for container in (f"edgepart-{NAME}-s0p0", f"edgepart-{NAME}-gateway"):
        info = deployment.inspect(container)
        config, host = info["Config"], info["HostConfig"]
        assert isinstance(config, dict) and isinstance(host, dict)
        assert config["User"] == "65532:65532"
        assert host["ReadonlyRootfs"] is True
        assert host["RestartPolicy"]["Name"] == "on-failure"
        assert "no-new-privileges" in " ".join(host.get("SecurityOpt") or [])
        assert "/readyz" in " ".join(config["Healthcheck"]["Test"])
    partition = deployment.inspect(f"edgepart-{NAME}-s0p0")["HostConfig"]
    assert isinstance(partition, dict)
    assert 0 < partition["NanoCpus"] <= 1e9 and partition["Memory"] > 2**20  # from the plan's requests
    probe = ("grep CapEff /proc/self/status; stat -c '%a %u' /etc/edgepart/secret; touch /x 2>&1 || true; "
             "cat /etc/edgepart/secret 2>&1 | wc -c")
    out = deployment.podman.run("exec", f"edgepart-{NAME}-s0p0", "sh", "-c", probe).stdout
    assert "CapEff:\t0000000000000000" in out and "400 65532" in out and "Read-only file system" in out, out


def test_a_killed_container_is_restarted_and_serves_again(deployment: Deployment) -> None:
    container = f"edgepart-{NAME}-s1p0"
    pid = deployment.inspect(container)["State"]["Pid"]  # type: ignore[index]
    os.kill(int(pid), signal.SIGKILL)  # a crash, not a `stop`: the restart policy applies
    deadline = time.monotonic() + 300
    while True:
        state = deployment.inspect(container)
        status = edgepart(deployment.env, "status", NAME)
        if int(state["RestartCount"]) >= 1 and status.returncode == 0:  # type: ignore[call-overload]
            break
        assert time.monotonic() < deadline, status.stdout + status.stderr
        time.sleep(2)
    deployment.infer_ok()


def test_down_leaves_nothing_behind(deployment: Deployment) -> None:
    down = edgepart(deployment.env, "down", NAME)
    assert down.returncode == 0, down.stdout + down.stderr
    for kind in ("container", "network", "volume"):
        listed = deployment.podman.run(kind, "ls", "-q", "--filter", f"label={LABEL}").stdout.split()
        if kind == "container":
            listed = deployment.podman.run("ps", "-a", "-q", "--filter", f"label={LABEL}").stdout.split()
        assert listed == [], (kind, listed)
