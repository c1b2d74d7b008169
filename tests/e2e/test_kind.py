"""On a real cluster (kind, k3s): the operator deploys a sample and the gateway answers correctly.

Opt-in: EDGEPART_E2E=1, with kubectl pointing at a cluster where the chart is installed (see
.github/workflows/kind-e2e.yml). EDGEPART_E2E_NAMESPACE (default edgepart) and EDGEPART_E2E_SAMPLE
(default the YOLOv2 sample) choose what to check.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.environ.get("EDGEPART_E2E") != "1", reason="needs a real cluster: set EDGEPART_E2E=1"),
]

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = os.environ.get("EDGEPART_E2E_NAMESPACE", "edgepart")
SAMPLE = ROOT / os.environ.get("EDGEPART_E2E_SAMPLE", "manifests/samples/yolov2-throughput.yaml")
READY_TIMEOUT_S = float(os.environ.get("EDGEPART_E2E_TIMEOUT", "1800"))


def kubectl(*args: str) -> str:
    executable = shutil.which("kubectl")
    assert executable, "kubectl is not on PATH"
    result = subprocess.run([executable, "--namespace", NAMESPACE, *args], capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


def get(kind: str, name: str | None = None) -> Any:
    return json.loads(kubectl("get", kind, *([name] if name else []), "-o", "json"))


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    """The sample, applied, once Ready (or Degraded)."""
    name = yaml.safe_load(SAMPLE.read_text())["metadata"]["name"]
    kubectl("apply", "-f", str(SAMPLE))
    deadline = time.monotonic() + READY_TIMEOUT_S
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = get("dnndeployment", name)
        phase = body.get("status", {}).get("phase")
        assert phase != "Failed", body["status"].get("message")
        if phase in ("Ready", "Degraded"):
            return body
        time.sleep(10)
    raise AssertionError(f"{name} not Ready after {READY_TIMEOUT_S:.0f}s: {body.get('status')}")


def test_one_pod_per_partition_on_its_planned_node(deployment: dict[str, Any]) -> None:
    status = deployment["status"]
    name = deployment["metadata"]["name"]
    plan = json.loads(get("configmap", status["plan"]["configMap"])["data"]["plan.json"])
    planned = {p["id"]: p["device"] for s in plan["stages"] for p in s["partitions"]}
    pods = [p for p in get("pods")["items"]
            if p["metadata"]["labels"].get("edgepart.io/deployment") == name
            and p["metadata"]["labels"].get("app.kubernetes.io/component") == "partition"
            and not p["metadata"].get("deletionTimestamp")]
    assert len(pods) == len(planned) == status["partitions"]
    for pod in pods:
        assert pod["spec"]["nodeName"] == planned[pod["metadata"]["labels"]["edgepart.io/partition"]]
        assert pod["metadata"]["ownerReferences"][0]["uid"] == deployment["metadata"]["uid"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def gateway(deployment: dict[str, Any]) -> Iterator[str]:
    port = _free_port()
    service = deployment["status"]["gateway"]["service"]
    forward = subprocess.Popen([shutil.which("kubectl") or "kubectl", "--namespace", NAMESPACE, "port-forward",
                                f"svc/{service}", f"{port}:8080"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        forward.terminate()
        forward.wait(timeout=10)


def test_an_inference_equals_the_whole_model(gateway: str) -> None:
    from edgepart.runtime.client import fetch_model, infer, reference_output
    from edgepart.runtime.planning import model_ref
    from edgepart.spec import load_deployment

    # the reference is the model the sample names, not what the gateway says (never run code a peer names)
    ref = model_ref(load_deployment(SAMPLE).spec.model)

    async def run() -> tuple[torch.Tensor, torch.Tensor]:
        info = await fetch_model(gateway)
        x = torch.randn(tuple(info["input_shape"]), generator=torch.Generator().manual_seed(0))
        result = await infer(gateway, x, timeout_s=300)
        return result.output, await reference_output(ref, x)

    output, expected = asyncio.run(run())
    assert output.shape == expected.shape
    torch.testing.assert_close(output, expected, atol=1e-4, rtol=1e-4)
