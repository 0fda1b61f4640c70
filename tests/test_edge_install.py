"""The base install on an edge device: no PyTorch, no onnxsim, maybe no ONNX Runtime.

Each case runs in a fresh interpreter whose imports of the blocked packages fail, as they do on a
Jetson with only `pip install rescompile`: every command ends in a result or one line naming what
to install, never an ImportError traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rescompile.stages.build import build_target
from tests.cli.test_cli import invoke

ROOT = Path(__file__).resolve().parents[1]
NO_COMPILE = ("torch", "torchvision", "onnxsim", "sklearn", "openvino", "nncf")  # the base install plus [ort]
BASE_ONLY = (*NO_COMPILE, "onnxruntime")  # the base install alone

BLOCKER = """
import sys
class _Block:
    def __init__(self, names):
        self.names = names
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            raise ImportError(f"No module named {name!r} (blocked for the test)")
        return None
sys.meta_path.insert(0, _Block(set(sys.argv[1].split(","))))
del sys.argv[1]
"""


def run_blocked(blocked: tuple[str, ...], code: str, *args: str, home: Path) -> subprocess.CompletedProcess:
    env = {"RESCOMPILE_HOME": str(home), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code), ",".join(blocked), *args],
        capture_output=True, text=True, timeout=300, env=env, cwd=home,
    )


CLI = "from rescompile.cli import main\nsys.argv = ['rescompile', *sys.argv[1:]]\nmain()\n"


def cli_blocked(blocked, *args, home):
    return run_blocked(blocked, CLI, *map(str, args), home=home)


def one_line(res: subprocess.CompletedProcess, *patterns: str) -> str:
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr and "ImportError" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith(">> ")]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    for p in patterns:
        assert p in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """The embedded default compiled to INT8 on this (full) install, as a workstation would."""
    out = tmp_path_factory.mktemp("edge") / "bundle"
    res = invoke("build", "--no-bench", "-o", out, "--num-images", "64")
    assert res.exit_code == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def image() -> Path:
    return next((ROOT / "calibration" / "digits" / "7").glob("*.png"))


@pytest.fixture
def edge_home(tmp_path) -> Path:
    return tmp_path


def test_blocker_really_blocks(edge_home):
    res = run_blocked(BASE_ONLY, "import torch", home=edge_home)
    assert res.returncode != 0 and "blocked for the test" in res.stderr


def test_from_bundle_says_no_tensorrt_here(bundle, edge_home):
    if build_target().can_build:
        pytest.skip("TensorRT and an NVIDIA GPU are here: --from-bundle builds the engine (tests/cli/test_build.py)")
    line = one_line(cli_blocked(BASE_ONLY, "build", "--from-bundle", bundle, home=edge_home), "--from-bundle builds a TensorRT engine")
    assert "no TensorRT" in line


def test_predict_runs_the_cpu_artifact_without_pytorch(bundle, image, edge_home):
    res = cli_blocked(NO_COMPILE, "predict", image, "--bundle", bundle, "--json", home=edge_home)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    # OpenVINO is not installed in this edge install, so ONNX Runtime runs whichever engine the build measured faster.
    assert data["runner"] == "onnxruntime on model_int8_cpu_pixels.onnx (uint8 pixels in)"  # no numpy normalisation either
    assert data["predictions"][0]["top"][0]["label"] == "7"


def test_predict_runs_on_openvino_alone(bundle, image, edge_home):
    """The base install plus [openvino]: no PyTorch, no ONNX Runtime; the bundle runs its OpenVINO form."""
    blocked = (*(m for m in NO_COMPILE if m != "openvino"), "onnxruntime")
    res = cli_blocked(blocked, "predict", image, "--bundle", bundle, "--json", home=edge_home)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["runner"] == "openvino on model_int8_openvino.onnx"
    assert data["predictions"][0]["top"][0]["label"] == "7"


def test_predict_without_onnxruntime_names_what_to_install(bundle, image, edge_home):
    one_line(cli_blocked(BASE_ONLY, "predict", image, "--bundle", bundle, home=edge_home), "no TensorRT engine", "rescompile[ort]")


RUNTIME = """
from rescompile import runtime
from rescompile.errors import MissingDependencyError
try:
    with runtime.load(sys.argv[1]) as r:
        top = r.classify(sys.argv[2], top_k=1)[0]
        print("RESULT", r.backend, top.label, round(top.probability, 3))
except MissingDependencyError as exc:
    print("MISSING", exc)
print("LOADED", sorted(m for m in ("torch", "onnxsim", "sklearn") if m in sys.modules))
"""


def test_runtime_classifies_with_the_base_install_and_onnxruntime(bundle, image, edge_home):
    res = run_blocked(NO_COMPILE, RUNTIME, str(bundle), str(image), home=edge_home)
    assert res.returncode == 0, res.stderr
    assert "RESULT onnxruntime 7" in res.stdout and "LOADED []" in res.stdout


def test_runtime_without_any_runner_raises_a_clear_error(bundle, image, edge_home):
    res = run_blocked(BASE_ONLY, RUNTIME, str(bundle), str(image), home=edge_home)
    assert res.returncode == 0, res.stderr
    assert "MISSING cannot run bundle" in res.stdout and "rescompile[ort]" in res.stdout, res.stdout


def test_bench_without_pytorch_compares_against_fp32_and_says_so(bundle, edge_home):
    res = cli_blocked(NO_COMPILE, "bench", bundle, "--batch-sizes", "1", "--warmup-s", "0.05", "--min-runs", "3", "--max-s", "0.2",
                      "--threads", "1", "-o", edge_home / "bench", "--json", home=edge_home)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    keys = [b["key"] for b in data["backends"]]
    assert "torch-fp32" not in keys and "ort-int8" in keys
    # no PyTorch: the FP32 reference is the FP32 TensorRT engine where there is one, else ONNX Runtime FP32
    assert data["reference"] == ("trt-fp32" if "trt-fp32" in keys else "ort-fp32")
    warnings = " ".join(data["warnings"])
    assert "PyTorch is not installed" in warnings and "not PyTorch FP32 eager" in warnings
    assert "scikit-learn is not installed" in warnings  # its digits test split: latency only, and it says so


def test_bench_with_nothing_to_run_is_one_line(bundle, edge_home):
    if build_target().can_build:
        pytest.skip("TensorRT and an NVIDIA GPU are here: the engine would run")
    one_line(cli_blocked(BASE_ONLY, "bench", bundle, "-o", edge_home / "bench", home=edge_home), "nothing on this machine can run")


@pytest.mark.parametrize("command", [
    ("build",),
    ("build", "{bundle}/model_opt.onnx", "-o", "out"),
    ("train", "--epochs", "1", "-o", "out"),
    ("export", "resnet20", "-o", "out/m.onnx"),
    ("calibrate", "{bundle}/model_opt.onnx", "--data", "{digits}", "-o", "out"),
    ("optimize", "{bundle}/model_fp32.onnx", "-o", "out/m.onnx"),
])
def test_compiling_commands_name_the_extra_and_write_nothing(command, bundle, edge_home):
    args = [a.format(bundle=bundle, digits=ROOT / "calibration" / "digits") for a in command]
    one_line(cli_blocked(BASE_ONLY, *args, home=edge_home), "is not installed here", "rescompile[compile]")
    assert not (edge_home / "out").exists() and not (edge_home / "builds").exists()
