"""`import rescompile.runtime` loads no heavy library: an edge app pays only for the runner it uses."""

from __future__ import annotations

import subprocess
import sys
import textwrap

HEAVY = ("torch", "onnx", "onnxruntime", "tensorrt", "torchvision", "polygraphy")


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_importing_the_runtime_and_bundle_reader_is_light():
    res = run(
        f"""
        import sys
        import rescompile.runtime
        from rescompile.runtime import load, Runner, Prediction, RunnerError, RuntimeMismatchError, check_engine
        from rescompile.bundle import read_manifest, verify
        from rescompile.runtime import compat, base
        print("HEAVY", sorted(m for m in {HEAVY!r} if m in sys.modules))
        """
    )
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout, res.stdout


def test_the_onnxruntime_runner_does_not_import_torch(tmp_path):
    # An ONNX file written without PyTorch: a 1x1 Conv classifier head is enough for the runner.
    res = run(
        f"""
        import sys
        import numpy as np
        import onnx
        from onnx import TensorProto, helper, numpy_helper
        w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
        graph = helper.make_graph(
            [helper.make_node("Conv", ["input", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["logits"])],
            "g",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
            [w],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, {str(tmp_path / "tiny.onnx")!r})
        from rescompile import runtime
        with runtime.load({str(tmp_path / "tiny.onnx")!r}) as r:
            out = r.infer(np.ones((2, 3, 8, 8), np.float32))
        assert out.shape == (2, 4) and np.allclose(out, 3.0), out
        print("TORCH", "torch" in sys.modules)
        """
    )
    assert res.returncode == 0, res.stderr
    assert "TORCH False" in res.stdout
