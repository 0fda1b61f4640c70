"""The engine report over TensorRT inspector JSON, and the build stage wired with a stand-in builder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rescompile.stages.build.engine import engine_report, layer_precision, tensor_precision

BLOCKS = [
    {"name": "layer1.0", "branch_convs": ["/l1/conv1/Conv", "/l1/conv2/Conv"], "skip_convs": [], "add": "/l1/Add_output_0"},
    {"name": "layer2.0", "branch_convs": ["/l2/conv1/Conv", "/l2/conv2/Conv"], "skip_convs": ["/l2/short/Conv"],
     "add": "/l2/Add_output_0"},
]
NODES = {"/l1/Add_output_0": "/l1/Add", "/l2/Add_output_0": "/l2/Add"}


def layer(name, fmt, trt11=False):
    io = {"Name": "t", "Dimensions": [1, 16, 32, 32]}
    io.update({"Datatype": fmt.split()[0], "Format": "NC/32HW32"} if trt11 else {"Format/Datatype": fmt})
    return {"Name": name, "LayerType": "CaskConvolution", "Inputs": [io], "Outputs": [dict(io)]}


@pytest.mark.parametrize("trt11", [False, True])
def test_fused_int8_blocks_are_recognised(trt11):
    int8 = "Int8 NC/32HW32" if not trt11 else "Int8 x"
    info = {"Layers": [
        layer("/l1/conv1/Conv + /l1/relu/Relu", int8, trt11),
        layer("/l1/conv2/Conv + /l1/Add + /l1/relu_1/Relu", int8, trt11),
        layer("/l2/conv1/Conv + /l2/relu/Relu", int8, trt11),
        layer("/l2/short/Conv", int8, trt11),
        layer("/l2/conv2/Conv", "Half NC/8HW8" if not trt11 else "Half x", trt11),  # ran FP16, the Add did not fuse
        layer("/l2/Add + /l2/relu_1/Relu", "Half NC/8HW8" if not trt11 else "Half x", trt11),
    ]}
    rep = engine_report(info, BLOCKS, NODES)
    first, second = rep.blocks
    assert (first.convs, first.int8_convs, first.add_fused) == (2, 2, True)
    assert (second.convs, second.int8_convs, second.add_fused) == (3, 2, False)
    assert rep.fused_adds == 1 and rep.layers == 6 and rep.by_precision == {"int8": 4, "fp16": 2}
    assert json.loads(json.dumps(rep.to_dict()))["residual_blocks"] == 2


def test_precision_strings():
    assert tensor_precision({"Format/Datatype": "Row major linear FP32"}) == "fp32"
    assert tensor_precision({"Datatype": "Float", "Format": "Row major"}) == "fp32"
    assert tensor_precision({"Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}) == "fp16"
    assert tensor_precision({"Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}) == "int8"
    assert layer_precision({"Name": "x"}) == "other"


def test_an_empty_or_odd_inspector_record_gives_an_empty_report():
    rep = engine_report({"Layers": ["not a dict"]}, BLOCKS, NODES)
    assert rep.layers == 0 and rep.fused_adds == 0 and all(b.add_layer is None for b in rep.blocks)


def test_pipeline_with_a_stand_in_builder(trained, tmp_path, monkeypatch):
    """Where TensorRT and a GPU exist, the pipeline builds, reports and lists the engine."""
    import rescompile.pipeline as pipeline
    import rescompile.stages.build as build_stage
    from rescompile.config import BuildConfig, CalibConfig, EngineConfig, Precision
    from rescompile.nvidia import GpuInfo

    gpu = GpuInfo("NVIDIA Jetson AGX Orin", "8.7", jetson=True)
    monkeypatch.setattr(pipeline, "build_target", lambda: build_stage.Target("10.3.0", gpu))
    seen = {}

    def fake_build(chain):
        seen["onnx"], seen["fp16"], seen["int8"] = chain.network.path, chain.create_config.fp16, chain.create_config.int8
        return b"ENGINE"

    def fake_info(data, **_):
        assert data == b"ENGINE"
        return {"Layers": [layer("/layer1/layer1.0/conv2/Conv + /layer1/layer1.0/Add + /layer1/layer1.0/relu_1/Relu", "Int8 x")]}

    monkeypatch.setattr(build_stage, "build_engine_bytes", fake_build)
    monkeypatch.setattr(build_stage, "engine_information", fake_info)
    out = tmp_path / "b"
    pipeline.build(BuildConfig(source=str(trained.checkpoint), output_dir=out, precision=Precision.int8,
                                     calib=CalibConfig(num_images=64), engine=EngineConfig(max_batch=16), bench=False))
    built_from = Path(seen.pop("onnx"))  # inside the run's staging folder, moved into out/ at the end
    assert built_from.name == "model_int8_qdq.onnx" and out in built_from.parents and seen == {"fp16": True, "int8": True}
    manifest = json.loads((out / "manifest.json").read_text())
    eng = manifest["engine"]
    assert (out / eng["path"]).read_bytes() == b"ENGINE" and manifest["files"]["engine"]["bytes"] == 6
    assert eng["tensorrt_version"] == "10.3.0" and eng["gpu"]["sm"] == "sm_87" and eng["profiles"][0]["max"] == [16, 3, 32, 32]
    assert eng["report"]["fused_adds"] == 1 and eng["report"]["residual_blocks"] == 9
    assert "engine_layers" in manifest["files"] and manifest["nvidia"]["gpu"]["name"] == "NVIDIA Jetson AGX Orin"
