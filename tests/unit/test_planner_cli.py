"""The planner's commands as a user runs them: plan with a cluster and a solver, simulate, solvers, profile."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from edgepart.cli import app

EXAMPLES = Path(__file__).parents[2] / "examples" / "clusters"
runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_plan_with_a_cluster_file_draws_and_simulates(tmp_path: Path) -> None:
    plan, svg = tmp_path / "plan.json", tmp_path / "plan.svg"
    code, out = run("plan", "squeezenet1_1", "--cluster", str(EXAMPLES / "heterogeneous-edge.yaml"),
                    "--solver", "fused-dp", "--objective", "latency", "-o", str(plan), "--svg", str(svg))
    assert code == 0, out
    data = json.loads(plan.read_text())
    assert data["solver"] == "fused-dp" and data["predicted"]["latency_s"] > 0
    assert data["schemaVersion"] == 2
    assert len(data["predicted"]["stages"]) == len({t["stage"] for t in data["tasks"] if t["stage"] is not None})
    assert "stage ms" in out and "predicted latency" in out
    assert svg.read_text().startswith("<svg")
    code, out = run("simulate", str(plan), "--cluster", str(EXAMPLES / "heterogeneous-edge.yaml"),
                    "--rate", "2", "--requests", "50")
    assert code == 0, out
    assert "simulated 50 requests (Poisson at 2/s)" in out and "utilisation" in out


def test_plan_with_solver_options_and_default_cluster(tmp_path: Path) -> None:
    plan = tmp_path / "p.json"
    code, out = run("plan", "vgg16", "--devices", "3", "--bandwidth", "1Gbps", "--solver", "fused-dp",
                    "-O", "max_fused=3", "-O", "device_sets=subsets", "-o", str(plan))
    assert code == 0, out
    data = json.loads(plan.read_text())
    assert data["meta"]["max_fused"] == 3 and data["meta"]["device_sets"] == "subsets"
    code, out = run("simulate", str(plan), "--bandwidth", "1Gbps", "--requests", "20")
    assert code == 0, out


def test_pipeline_plan_for_throughput(tmp_path: Path) -> None:
    plan = tmp_path / "p.json"
    code, out = run("plan", "resnet50", "--cluster", str(EXAMPLES / "homogeneous-4.yaml"), "--solver",
                    "pipeline-dp", "--objective", "throughput", "-o", str(plan))
    assert code == 0, out
    data = json.loads(plan.read_text())
    devices = [t["device"] for t in data["tasks"]]
    assert len(devices) == len(set(devices))


def test_solvers_lists_every_solver() -> None:
    code, out = run("solvers")
    assert code == 0
    for name in ("auto", "single", "layerwise", "ftp-grid", "fused-dp", "pipeline-dp", "brute-force",
                 "mgp-memetic", "mgp-pso", "lo-pso", "heft"):
        assert name in out


def test_planner_errors_are_one_clear_line() -> None:
    for args, message in (
        (["plan", "alexnet", "--solver", "fused-dp", "-O", "bogus=1"], "unknown option 'bogus'"),
        (["plan", "alexnet", "--solver", "fused-dp", "-O", "max_fused=many"], "max_fused='many' is not a valid int"),
        (["plan", "alexnet", "--objective", "speed"], "objective must be one of latency, throughput"),
        (["plan", "alexnet", "--cluster", "/nonexistent.yaml"], "cannot read /nonexistent.yaml"),
        (["simulate", "/nonexistent/plan.json"], "cannot read plan"),
    ):
        code, out = run(*args)
        assert code == 2, (args, out)
        assert message in out, (args, out)
        assert "Traceback" not in out


def test_profile_net_probe_reports_an_unreachable_peer() -> None:
    code, out = run("profile", "--net-probe", "http://127.0.0.1:9")
    assert code == 2, out
    assert "--net-probe http://127.0.0.1:9" in out
