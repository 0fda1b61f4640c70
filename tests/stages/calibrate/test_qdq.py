"""Q/DQ placement for TensorRT and the CPU INT8 model, on real ResNets."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from rescompile.stages.calibrate.accuracy import Evaluator, session
from rescompile.stages.calibrate.calibrators import compute_amax
from rescompile.stages.calibrate.collect import activation_tensors
from rescompile.stages.calibrate.lint import lint_qdq
from rescompile.stages.calibrate.qdq import has_vnni, qdq_for_cpu, qdq_for_openvino, qdq_for_tensorrt, quantizable_layers, quantize_weights
from rescompile.stages.optimize.graph import Graph
from rescompile.stages.optimize.residual import find_residual_blocks
from tests.tolerance import Tolerance


def unit_amax(model: onnx.ModelProto) -> dict[str, float]:
    return {t: 4.0 for t in activation_tensors(model)}


def producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def consts(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("which, adds", [("r20", 9), ("r18", 8)])
def test_every_residual_add_has_qdq_on_exactly_its_skip_input(which, adds, request):
    m = request.getfixturevalue(which)
    blocks = find_residual_blocks(Graph(m.onnx))
    assert len(blocks) == adds
    q = qdq_for_tensorrt(m.onnx, unit_amax(m.onnx))
    prod = producers(q)
    add_nodes = {b.add: b for b in blocks}
    seen = 0
    for node in q.graph.node:
        if node.op_type != "Add" or node.output[0] not in add_nodes:
            continue
        seen += 1
        block = add_nodes[node.output[0]]
        kinds = [prod[i].op_type for i in node.input]
        assert sorted(kinds) == ["Conv", "DequantizeLinear"], (node.name, kinds)
        dq = prod[node.input[kinds.index("DequantizeLinear")]]
        quant = prod[dq.input[0]]
        assert quant.op_type == "QuantizeLinear" and quant.input[0] == block.skip_input
        branch = prod[node.input[kinds.index("Conv")]]
        assert branch.output[0] == block.branch_input  # nothing between the branch's last Conv and the Add
    assert seen == adds
    report = lint_qdq(q)
    assert report.passed, report.violations
    assert report.residual_adds == adds


@pytest.mark.parametrize("which", ["r20", "r18"])
def test_every_conv_and_gemm_is_quantized_int8_symmetric(which, request):
    m = request.getfixturevalue(which)
    q = qdq_for_tensorrt(m.onnx, unit_amax(m.onnx))
    prod, c = producers(q), consts(q)
    layers = [n for n in q.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(layers) == len(quantizable_layers(m.onnx))
    for layer in layers:
        act, weight = prod[layer.input[0]], prod[layer.input[1]]
        assert act.op_type == "DequantizeLinear" and prod[act.input[0]].op_type == "QuantizeLinear"
        assert c[act.input[2]].dtype == np.int8 and c[act.input[2]] == 0 and c[act.input[1]].ndim == 0
        assert weight.op_type == "DequantizeLinear"
        wq, ws = c[weight.input[0]], c[weight.input[1]]
        assert wq.dtype == np.int8 and np.abs(wq.astype(int)).max() <= 127
        axis = next((a.i for a in weight.attribute if a.name == "axis"), 1)
        assert ws.shape == (wq.shape[axis],)
    # Float weights of quantized layers are gone: the Q/DQ file carries int8 weights.
    assert not any(t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 4 for t in q.graph.initializer)


def test_quantize_weights_per_output_channel():
    w = np.stack([np.full((2, 3, 3), 0.1), np.full((2, 3, 3), -10.0)]).astype(np.float32)
    w[0, 0, 0, 0] = -0.2
    q, scale = quantize_weights(w, 0)
    np.testing.assert_allclose(scale, [0.2 / 127, 10.0 / 127], rtol=1e-6)
    assert q[0, 0, 0, 0] == -127 and q[1].min() == -127 and q[0, 0, 0, 1] == 64
    np.testing.assert_allclose(q * scale[:, None, None, None], w, atol=scale.max() / 2 + 1e-7)


def test_one_set_of_scales_feeds_every_quantizer(r20, r20_stats):
    amax = compute_amax(r20_stats, "entropy")
    q = qdq_for_tensorrt(r20.onnx, amax)
    c = consts(q)
    for node in q.graph.node:
        if node.op_type == "QuantizeLinear":
            assert c[node.input[1]] == np.float32(amax[node.input[0]] / 127.0)


def test_float_layers_are_left_unquantized(r20):
    layers = quantizable_layers(r20.onnx)
    keep = {layers[0], layers[-1]}
    q = qdq_for_tensorrt(r20.onnx, unit_amax(r20.onnx), float_layers=keep)
    prod = producers(q)
    for node in q.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            quantized = prod.get(node.input[0]) is not None and prod[node.input[0]].op_type == "DequantizeLinear"
            assert quantized == ((node.name or node.output[0]) not in keep)
    assert lint_qdq(q, float_layers=keep).passed
    assert not lint_qdq(q).passed  # without being told, the lint names them


# r20 is trained for five epochs on the machine the test runs on: 2% of the 360 test images (7) may
# change their prediction under INT8; broken scales change far more (the cosine check below).
INT8_DIFFER = Tolerance(7, 360, "INT8 of a briefly trained model, 2% of the test split")


def test_trt_model_tracks_fp32_under_reference_semantics(r20, r20_stats, digits):
    ev = Evaluator(r20.onnx, digits.test, r20.spec.preprocessing)
    score = ev(qdq_for_tensorrt(r20.onnx, compute_amax(r20_stats, "percentile", 99.99)))
    INT8_DIFFER.check_agreement_rate(score.top1_agreement)
    assert score.cosine > 0.999  # a mean over 360 images: no single image moves it
    # Broken scales are visible: an amax 100x too small everywhere ruins the logits.
    tiny = {k: v / 100 for k, v in compute_amax(r20_stats, "max").items()}
    assert ev(qdq_for_tensorrt(r20.onnx, tiny)).cosine < 0.99


# The path production takes on this CPU (7-bit weights without VNNI, where ONNX Runtime's u8s8
# kernels would saturate 8-bit ones), and the full 8-bit path only where VNNI makes it safe.
CPU_PATHS = [
    pytest.param(not has_vnni(), id="as-deployed-here"),
    pytest.param(False, id="8-bit-weights", marks=pytest.mark.skipif(
        not has_vnni(), reason="8-bit weights need VNNI: without it ONNX Runtime's u8s8 kernels saturate (production uses 7-bit here)")),
]


@pytest.mark.parametrize("reduce_range", CPU_PATHS)
def test_cpu_model_runs_fast_kernels_and_tracks_fp32(r20, r20_stats, digits, reduce_range):
    amax = compute_amax(r20_stats, "entropy")
    tmin = {k: s.min for k, s in r20_stats.items()}
    cpu = qdq_for_cpu(r20.onnx, amax, tmin, reduce_range=reduce_range)
    c = consts(cpu)
    relus = sum(n.op_type == "Relu" for n in cpu.graph.node)
    assert relus == 0  # every ReLU folded into a uint8 clamp
    zps = [c[n.input[2]] for n in cpu.graph.node if n.op_type == "QuantizeLinear"]
    assert zps and all(z.dtype == np.uint8 for z in zps)
    biases = [c[n.input[0]] for n in cpu.graph.node if n.op_type == "DequantizeLinear" and c.get(n.input[0]) is not None
              and c[n.input[0]].dtype == np.int32]
    assert len(biases) == sum(n.op_type in ("Conv", "Gemm") for n in cpu.graph.node)
    ev = Evaluator(r20.onnx, digits.test, r20.spec.preprocessing)
    score = ev(cpu, reference=False)
    INT8_DIFFER.check_agreement_rate(score.top1_agreement)
    assert score.cosine > 0.999  # a mean over 360 images: no single image moves it
    # ONNX Runtime really fuses it into integer kernels (optimized graph has QLinearConv).
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(r20.path.parent / "cpu_optimized.onnx")
    ort.InferenceSession(cpu.SerializeToString(), so, providers=["CPUExecutionProvider"])
    optimized = onnx.load(so.optimized_model_filepath)
    ops = [n.op_type for n in optimized.graph.node]
    assert ops.count("QLinearConv") >= 19 and ops.count("QGemm") == 1 and "Gemm" not in ops


def test_reference_session_keeps_qdq_semantics(r20):
    q = qdq_for_tensorrt(r20.onnx, unit_amax(r20.onnx))
    s = session(q, reference=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert np.isfinite(s.run(None, {s.get_inputs()[0].name: x})[0]).all()


def ort_optimized(model: onnx.ModelProto, folder) -> onnx.ModelProto:
    """The graph ONNX Runtime actually runs (optimizations on), as it writes it out."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(folder / "ort_optimized.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return onnx.load(so.optimized_model_filepath)


@pytest.fixture(scope="module")
def r18_stem(tmp_path_factory):
    """torchvision resnet18 at a size that keeps its stem (7x7 conv, MaxPool)."""
    pytest.importorskip("torchvision")
    from tests.stages.calibrate.conftest import _prepare

    return _prepare("resnet18", tmp_path_factory.mktemp("r18stem"), num_classes=10, input_size=96)


@pytest.mark.parametrize("reduce_range", [False, True])
def test_cpu_artifact_stays_integer_through_maxpool(r18_stem, reduce_range, tmp_path):
    """torchvision's stem MaxPool: with the same uint8 parameters on both sides ONNX Runtime runs
    it on uint8 (NhwcMaxPool) and keeps the whole network NHWC: no float MaxPool, no NCHWc
    reorders, two Transposes (in and out), every Conv a QLinearConv."""
    from rescompile.stages.calibrate.collect import collect_statistics

    assert "MaxPool" in {n.op_type for n in r18_stem.onnx.graph.node}
    x = np.random.default_rng(0).standard_normal((4, 3, 96, 96)).astype(np.float32)
    stats = collect_statistics(r18_stem.onnx, lambda: iter([x]))
    cpu = qdq_for_cpu(r18_stem.onnx, compute_amax(stats, "entropy"), {k: s.min for k, s in stats.items()}, reduce_range=reduce_range)
    ops = [(n.domain or "", n.op_type) for n in ort_optimized(cpu, tmp_path).graph.node]
    names = [op for _, op in ops]
    assert ("com.microsoft", "NhwcMaxPool") in ops and "MaxPool" not in names
    assert not any(domain == "com.microsoft.nchwc" for domain, _ in ops)
    assert names.count("Transpose") <= 2 and "Conv" not in names and names.count("QLinearConv") == 20


def test_cpu_artifact_of_a_cifar_resnet_has_no_layout_flips(r20, r20_stats, tmp_path):
    cpu = qdq_for_cpu(r20.onnx, compute_amax(r20_stats, "entropy"), {k: s.min for k, s in r20_stats.items()}, reduce_range=False)
    names = [n.op_type for n in ort_optimized(cpu, tmp_path).graph.node]
    assert names.count("Transpose") <= 2 and "Conv" not in names and names.count("QuantizeLinear") == 1


def test_openvino_form_is_symmetric_with_float_biases_and_tracks_fp32(r20, r20_stats, digits):
    """The OpenVINO form: the CPU artifact's placement (one Q/DQ per activation, ReLUs folded), signed
    tensors int8 around 0 instead of uint8 around 128, biases left in float, 7-bit weights where the
    CPU lacks VNNI (8-bit ones saturate OpenVINO's AVX2 kernels too)."""
    ov = pytest.importorskip("openvino")
    amax = compute_amax(r20_stats, "entropy")
    tmin = {k: s.min for k, s in r20_stats.items()}
    reduce_range = not has_vnni()
    form = qdq_for_openvino(r20.onnx, amax, tmin, reduce_range=reduce_range)
    cpu = qdq_for_cpu(r20.onnx, amax, tmin, reduce_range=True)
    c, cc = consts(form), consts(cpu)
    quant = [n for n in form.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quant) == sum(n.op_type == "QuantizeLinear" for n in cpu.graph.node)  # the same tensors quantized
    signed = [n for n in quant if c[n.input[2]].dtype == np.int8]
    assert signed and all(c[n.input[2]] == 0 for n in signed)  # the input and the pre-Add branch outputs at least
    assert all(c[n.input[2]].dtype == np.uint8 and c[n.input[2]] == 0 for n in quant if n not in signed)
    cpu_zp = {n.input[0]: cc[n.input[2]] for n in cpu.graph.node if n.op_type == "QuantizeLinear"}
    assert all(cpu_zp[n.input[0]] == 128 for n in signed)  # exactly the tensors the CPU artifact shifts by 128
    assert not any(v.dtype == np.int32 for v in c.values())  # no int32 biases
    weights = [c[n.input[0]] for n in form.graph.node if n.op_type == "DequantizeLinear" and c.get(n.input[0]) is not None]
    assert weights and max(int(np.abs(w).max()) for w in weights) == (63 if reduce_range else 127)
    assert sum(n.op_type == "Relu" for n in form.graph.node) == 0
    score = Evaluator(r20.onnx, digits.test, r20.spec.preprocessing).openvino(form)
    assert score is not None and ov is not None
    INT8_DIFFER.check_agreement_rate(score.top1_agreement)


def test_an_openvino_form_worse_than_the_cpu_artifact_is_not_written(r20, r20_stats, digits):
    """The build keeps the OpenVINO form only when it agrees with FP32 as well as the CPU artifact
    (within one image): one with its scales clipped to a tenth is refused, with the reason."""
    from rescompile.stages.calibrate.stage import _check_openvino

    amax = compute_amax(r20_stats, "entropy")
    tmin = {k: s.min for k, s in r20_stats.items()}
    ev = Evaluator(r20.onnx, digits.test, r20.spec.preprocessing)
    cpu_score = ev(qdq_for_cpu(r20.onnx, amax, tmin, reduce_range=not has_vnni()), reference=False)
    good, row = _check_openvino(qdq_for_openvino(r20.onnx, amax, tmin, reduce_range=not has_vnni()), ev, cpu_score)
    assert good is not None and row["written"] and row["images"] == 360
    clipped = qdq_for_openvino(r20.onnx, {t: a / 10 for t, a in amax.items()}, tmin, reduce_range=not has_vnni())
    bad, row = _check_openvino(clipped, ev, cpu_score)
    assert bad is None and not row["written"] and "the CPU artifact on" in row["reason"]
    assert row["top1_agreement"] < cpu_score.top1_agreement - 1 / 360
