"""Real TensorRT on a real NVIDIA GPU (`pytest -m trt`): skipped where either is missing, and
written to run unchanged where both are. FP32, FP16 and INT8 engines of the trained digits
ResNet-20 and of a resnet18 trained for a few epochs; the INT8 engine must agree with FP32 on at
least 99% of the digits test images, run every residual block's convolutions in INT8 with the
Add fused into the block's last convolution (read from the engine inspector's layer JSON), and
load in rescompile.runtime and, where it is installed, in trtexec."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from rescompile.config import BuildConfig, CalibConfig, DataConfig, Optimizer, Precision, TrainConfig
from tests.tolerance import Tolerance

pytestmark = [pytest.mark.trt, pytest.mark.gpu]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    from rescompile.models.default import embedded_default
    from rescompile.train import train

    r18 = train(TrainConfig(arch="resnet18", input_size=32, epochs=4, optimizer=Optimizer.adam, lr=1e-3, warmup_epochs=0,
                            output_dir=tmp_path_factory.mktemp("r18")))
    return {"resnet20": embedded_default().path, "resnet18": r18.checkpoint}


def digits_for(bundle: Path) -> tuple[np.ndarray, np.ndarray]:
    from rescompile.bundle import read_manifest
    from rescompile.data.datasets import load_dataset

    test = load_dataset(DataConfig("digits")).test
    spec = read_manifest(bundle).spec
    return spec.preprocessing(test.images(range(len(test)))).astype(np.float32), np.asarray(test.labels)


def predictions(runner, x: np.ndarray, batch: int = 16) -> np.ndarray:
    return np.concatenate([runner.infer(x[i:i + batch]) for i in range(0, len(x), batch)]).argmax(1)


@pytest.mark.parametrize("model", ["resnet20", "resnet18"])
@pytest.mark.parametrize("precision", [Precision.fp32, Precision.fp16, Precision.int8])
def test_engine_builds_runs_and_agrees_with_fp32(sources, model, precision, tmp_path):
    from rescompile import runtime
    from rescompile.pipeline import build

    out = tmp_path / f"{model}-{precision.value}"
    build(BuildConfig(source=str(sources[model]), output_dir=out, precision=precision, calib=CalibConfig(num_images=512), bench=False))
    manifest = json.loads((out / "manifest.json").read_text())
    engine = manifest["engine"]
    assert engine is not None and (out / engine["path"]).is_file(), "TensorRT and a GPU are here, so build makes an engine"
    x, y = digits_for(out)
    with runtime.load(out / "model_opt.onnx") as fp32:
        ref = predictions(fp32, x)
    with runtime.load(out) as runner:
        assert runner.backend == "tensorrt"
        got = predictions(runner, x)
    # 1% of the 360 test images for INT8, 0.5% for FP16/FP32 (kernels that sum in another order move
    # only images whose top two logits nearly tie); never less than one image.
    tol = Tolerance.from_rate(0.01 if precision == Precision.int8 else 0.005, len(ref), f"TensorRT {precision.value} vs FP32")
    tol.check_agreement(got, ref, precision.value)
    if precision == Precision.int8:
        report = engine["report"]
        assert report and report["residual_blocks"] > 0
        for block in report["blocks"]:
            assert block["int8_convs"] == block["convs"], block
            assert block["add_fused"], block
    trtexec = shutil.which("trtexec")
    if trtexec:
        shape = "x".join(map(str, [1, *manifest["spec"]["input_shape"]]))
        done = subprocess.run([trtexec, f"--loadEngine={out / engine['path']}", f"--shapes={manifest['input']['name']}:{shape}",
                               "--iterations=10", "--duration=0", "--warmUp=0"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
