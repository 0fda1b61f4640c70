"""The engine report over TensorRT inspector JSON, and the pipeline building through Polygraphy on a stand-in TensorRT."""

from __future__ import annotations

import json

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
    assert tensor_precision({"DataType": "Int8", "Format": "NC/32HW32"}) == "int8"  # NVIDIA's 11.x migration page spelling
    # Type names are whole words: "INT8" is not in "UINT8", "FLOAT" not in "BFLOAT16" or "FLOAT8".
    assert tensor_precision({"Datatype": "UInt8"}) == "other" and tensor_precision({"Datatype": "BFloat16"}) == "other"
    assert tensor_precision({"Format/Datatype": "Row major linear FLOAT8"}) == "other"
    # A record whose type cannot be read is unknown, not "not INT8".
    assert layer_precision({"Name": "x"}) == "unknown" and tensor_precision({"Format": "NC/32HW32"}) == "unknown"


def test_an_empty_or_odd_inspector_record_gives_an_empty_report():
    rep = engine_report({"Layers": ["not a dict"]}, BLOCKS, NODES)
    assert rep.layers == 0 and rep.fused_adds == 0 and all(b.add_layer is None for b in rep.blocks)


def test_pipeline_builds_through_polygraphy_on_a_stand_in_jetson(trained, tmp_path, monkeypatch):
    """Where TensorRT and a GPU exist, the pipeline builds (Polygraphy's real loaders, TensorRT
    10.3's bindings), reports and lists the engine."""
    import rescompile.pipeline as pipeline
    from rescompile.config import BuildConfig, CalibConfig, EngineConfig, Precision
    from tests.trt_api.machine import Machine, install

    machine = Machine("10.3.0", gpu_name="NVIDIA Jetson AGX Orin", compute_capability="8.7", jetson=True, dla_cores=2)
    install(monkeypatch, machine)
    out = tmp_path / "b"
    pipeline.build(BuildConfig(source=str(trained.checkpoint), output_dir=out, precision=Precision.int8,
                               calib=CalibConfig(num_images=64), engine=EngineConfig(max_batch=16), bench=False))
    header = machine.builds[-1]
    assert (header["fp16"], header["int8"], header["tf32"], header["profile"][2]) == (True, True, False, [16, 3, 32, 32])
    manifest = json.loads((out / "manifest.json").read_text())
    eng = manifest["engine"]
    assert (out / eng["path"]).stat().st_size == manifest["files"]["engine"]["bytes"]
    assert eng["tensorrt_version"] == "10.3.0" and eng["gpu"]["sm"] == "sm_87" and eng["profiles"][0]["max"] == [16, 3, 32, 32]
    assert eng["report"]["residual_blocks"] == 9 and eng["report"]["by_precision"].get("int8", 0) > 0
    assert {"engine_layers", "timing_cache", "timing_cache_record"} <= set(manifest["files"])
    assert manifest["nvidia"]["gpu"]["name"] == "NVIDIA Jetson AGX Orin"
