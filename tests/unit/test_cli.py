"""The CLI as a user runs it: exit codes, tables, and one-line errors instead of tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgepart.cli import app

TINY = str(Path(__file__).parents[2] / "examples" / "models" / "tinynet.py") + ":build"
runner = CliRunner()


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_models_lists_the_zoo() -> None:
    code, out = run("models")
    assert code == 0
    for name in ("vgg16", "yolov2", "yolov2-608", "alexnet", "squeezenet1_1", "googlenet", "resnet50", "mobilenet_v2"):
        assert name in out


def test_inspect_prints_layers_and_cut_points() -> None:
    code, out = run("inspect", TINY, "--input-shape", "1,3,64,64")
    assert code == 0, out
    assert "stem_0" in out and "conv" in out and "3x3" in out and "16x64x64" in out
    assert "cut points" in out


@pytest.mark.parametrize("solver,extra", [("ftp-grid", ["--grid", "2x2"]), ("ftp-grid", ["--grid", "4x1"]),
                                          ("layerwise", []), ("single", [])])
def test_plan_then_verify_a_user_model(tmp_path: Path, solver: str, extra: list[str]) -> None:
    plan = tmp_path / "plan.json"
    code, out = run("plan", TINY, "--input-shape", "1,3,64,64", "--devices", "3", "--solver", solver, *extra,
                    "-o", str(plan))
    assert code == 0, out
    assert json.loads(plan.read_text())["solver"] == solver
    code, out = run("verify", TINY, "--input-shape", "1,3,64,64", "--plan", str(plan))
    assert code == 0, out
    assert "OK" in out and "max abs diff" in out


def test_verify_without_a_plan_file_builds_one() -> None:
    code, out = run("verify", "squeezenet1_1", "--devices", "4", "--solver", "ftp-grid", "--grid", "3x3")
    assert code == 0, out


def test_verify_exits_1_when_outputs_differ_beyond_tolerance() -> None:
    # oneDNN's convolutions choose their algorithm by the tile's size, so fused tiles round differently
    # from the whole map: last-bit differences that zero tolerance must reject (exact kernels, the
    # default, agree to the bit; MKL_CBWR pinning made even layerwise FC splits agree)
    code, out = run("verify", "alexnet", "--solver", "ftp-grid", "--grid", "2x2", "--fast-kernels",
                    "--atol", "0", "--rtol", "0")
    assert code == 1, out
    assert "differs from the whole model" in out


@pytest.mark.parametrize("args,message", [
    (["inspect", "resnet51"], "unknown model 'resnet51'"),
    (["inspect", "nosuchmodule:build", "--input-shape", "1,3,8,8"], "cannot import module nosuchmodule"),
    (["inspect", "missing/file.py:build", "--input-shape", "1,3,8,8"], "file missing/file.py does not exist"),
    (["inspect", TINY], "input-shape"),
    (["inspect", TINY, "--input-shape", "1,3,x"], "input shape"),
    (["plan", "alexnet", "--solver", "ftp-grid", "--grid", "14x1", "-o", "/tmp/never.json"], "grid 14x1"),
    (["plan", "alexnet", "--solver", "magic"], "unknown solver 'magic'"),
    (["verify", "alexnet", "--plan", "/nonexistent/plan.json"], "cannot read plan"),
])
def test_bad_input_gets_one_clear_line(args: list[str], message: str) -> None:
    code, out = run(*args)
    assert code == 2, out
    assert message in out
    assert "Traceback" not in out


def test_recalibrate_is_for_emulated_devices(tmp_path: Path) -> None:
    code, out = run("up", str(tmp_path / "missing.yaml"), "--recalibrate")
    assert code != 0 and "--recalibrate" in out and "--emulate" in out
    code, out = run("up", str(tmp_path / "missing.yaml"), "--emulate", "--recalibrate", "--no-calibrate")
    assert code != 0 and "contradict" in out


def test_a_compressed_plan_verifies_bit_exact(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    code, out = run("plan", "alexnet", "--solver", "ftp-grid", "--grid", "2x2", "--compression", "auto",
                    "--bandwidth", "10Mbps", "-o", str(plan))
    assert code == 0, out
    codecs = {i["codec"] for t in json.loads(plan.read_text())["tasks"] for i in t["inputs"]}
    assert codecs & {"lz4", "zstd"}, codecs  # at 10 Mbit/s compressing post-ReLU activations pays
    code, out = run("verify", "--plan", str(plan), "--atol", "0", "--rtol", "0")
    assert code == 0, out


def test_float16_on_the_wire_reports_its_error() -> None:
    code, out = run("verify", "alexnet", "--solver", "ftp-grid", "--grid", "2x2", "--wire-dtype", "float16",
                    "--atol", "0", "--rtol", "0")
    assert code == 1, out
    assert "float16 on the wire" in out and "max abs diff 0 " not in out
    code, out = run("verify", "alexnet", "--solver", "ftp-grid", "--grid", "2x2", "--wire-dtype", "float16",
                    "--atol", "1e-2", "--rtol", "1")
    assert code == 0, out


def test_bad_wire_options_are_named() -> None:
    code, out = run("plan", "alexnet", "--compression", "gzip", "-o", "/tmp/never.json")
    assert code == 2 and "--compression 'gzip'" in out
    code, out = run("verify", "alexnet", "--wire-dtype", "int8")
    assert code == 2 and "--wire-dtype 'int8'" in out
