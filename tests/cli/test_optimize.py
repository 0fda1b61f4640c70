"""rescompile optimize / inspect through the CLI, including bad inputs."""

from __future__ import annotations

import json

import onnx
from onnx import helper

from tests.cli.test_cli import invoke, one_line_error
from tests.stages.optimize.graphs import classifier, conv_params
from tests.stages.optimize.test_models import export_with_bn


def test_optimize_prints_report_and_writes_model(tmp_path):
    raw = tmp_path / "raw.onnx"
    export_with_bn("resnet20", raw)
    res = invoke("optimize", raw, "-o", tmp_path / "opt.onnx")
    assert res.exit_code == 0, res.stderr
    assert "layer3.2" in res.stdout and "BatchNormalization: 21 -> 0" in res.stdout
    assert "residual blocks: 9 (9 fusable)" in res.stdout
    data = json.loads(invoke("optimize", raw, "-o", tmp_path / "opt.onnx", "--json").stdout)
    assert data["totals"]["residual_blocks"] == 9 and data["rewrites"]["fold_batchnorm"] == 21 and data["check"]["passed"]


def test_inspect_json(tmp_path):
    raw = tmp_path / "raw.onnx"
    export_with_bn("resnet20", raw)
    data = json.loads(invoke("inspect", raw, "--json").stdout)
    assert len(data["blocks"]) == 9 and data["bn_after"] == 21


def untouched(path, before: bytes) -> None:
    assert path.read_bytes() == before


def test_bad_inputs(tmp_path):
    out = tmp_path / "o.onnx"
    text = tmp_path / "notes.onnx"
    text.write_text("not a model at all")
    one_line_error(invoke("optimize", text, "-o", out), "not a readable ONNX model")
    untouched(text, b"not a model at all")

    raw = tmp_path / "raw.onnx"
    export_with_bn("resnet20", raw)
    data = raw.read_bytes()
    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes(data[: len(data) // 3])
    one_line_error(invoke("optimize", trunc, "-o", out), "not a readable ONNX model")
    untouched(trunc, data[: len(data) // 3])

    noconv = classifier([helper.make_node("Relu", ["input"], ["feat"])], [], channels=3)
    onnx.save(noconv, tmp_path / "noconv.onnx")
    one_line_error(invoke("optimize", tmp_path / "noconv.onnx", "-o", out), "it has no Conv nodes")
    one_line_error(invoke("inspect", tmp_path / "noconv.onnx"), "it has no Conv nodes")

    dyn = classifier(
        [
            helper.make_node("ReduceMax", ["input"], ["mx"], keepdims=0),
            helper.make_node("Mul", ["c1.w", "mx"], ["w_dyn"]),
            helper.make_node("Conv", ["input", "w_dyn"], ["feat"], pads=[1, 1, 1, 1]),
        ],
        conv_params("c1", 3, 4, bias=False),
        channels=4,
    )
    onnx.save(dyn, tmp_path / "dyn.onnx")
    before = (tmp_path / "dyn.onnx").read_bytes()
    one_line_error(invoke("optimize", tmp_path / "dyn.onnx", "-o", out), "computed at run time")
    untouched(tmp_path / "dyn.onnx", before)
    one_line_error(invoke("optimize", tmp_path / "missing.onnx", "-o", out), "no such ONNX file")
    assert not out.exists()
