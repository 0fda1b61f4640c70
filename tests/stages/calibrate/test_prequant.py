"""Models that arrive already quantized (Q/DQ): build uses their scales as they are, calibrate refuses them.

Sources from different tools, all made here from the session's trained ResNet-20: ONNX Runtime's
quantize_static (symmetric and asymmetric int8, uint8 activations), the TensorRT-style Q/DQ model
rescompile itself writes (ModelOpt's placement), and NNCF where it imports.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from rescompile.data.images import iter_batches
from rescompile.stages.calibrate.cache import read_cache
from rescompile.stages.calibrate.prequant import inspect_quantization, quantized_source
from rescompile.stages.calibrate.strip import INTEGERS, strip_qdq
from tests.cli.test_cli import invoke, one_line_error

METHODS = ("entropy", "max", "percentile", "mse", "auto")


def _calib_batches(r20, digits, n=64):
    return [x for x, _ in iter_batches(digits.train.subset(np.arange(n)), r20.spec.preprocessing, 16)]


def _ort(r20, digits, path, fmt="QDQ", activations="QInt8", symmetric=False):
    q = pytest.importorskip("onnxruntime.quantization")

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": x} for x in _calib_batches(r20, digits)])

        def get_next(self):
            return next(self.it, None)

    q.quantize_static(str(r20.path), str(path), Reader(), quant_format=getattr(q.QuantFormat, fmt), per_channel=True,
                      activation_type=getattr(q.QuantType, activations), weight_type=q.QuantType.QInt8,
                      extra_options={"ActivationSymmetric": symmetric})
    return path


@pytest.fixture(scope="module")
def sources(r20, r20_stats, digits, tmp_path_factory):
    """name -> path of a pre-quantized ResNet-20 (seeded: the first 64 digits train images)."""
    from rescompile.stages.calibrate.calibrators import compute_amax
    from rescompile.stages.calibrate.qdq import qdq_for_tensorrt

    d = tmp_path_factory.mktemp("prequant")
    out = {
        "ort-s8-symmetric": _ort(r20, digits, d / "ort_s8s.onnx", symmetric=True),
        "ort-s8": _ort(r20, digits, d / "ort_s8.onnx"),
        "ort-u8": _ort(r20, digits, d / "ort_u8.onnx", activations="QUInt8"),
        "ort-u8-symmetric": _ort(r20, digits, d / "ort_u8s.onnx", activations="QUInt8", symmetric=True),
    }
    # What `rescompile calibrate` writes as model_int8_qdq.onnx (ModelOpt's placement), fed back as a source.
    onnx.save(qdq_for_tensorrt(r20.onnx, compute_amax(r20_stats, "max")), str(d / "rescompile_qdq.onnx"))
    out["rescompile"] = d / "rescompile_qdq.onnx"
    return out


@pytest.fixture(scope="module")
def nncf_source(r20, digits, tmp_path_factory):
    try:
        import nncf
    except Exception as exc:  # noqa: BLE001  not installed, or it wants openvino
        pytest.skip(f"nncf does not import here ({exc.__class__.__name__}: {exc})")
    model = nncf.quantize(onnx.load(str(r20.path)), nncf.Dataset(_calib_batches(r20, digits), lambda x: {"input": x}), subset_size=64)
    path = tmp_path_factory.mktemp("nncf") / "nncf.onnx"
    onnx.save(model, str(path))
    return path


def _given_scales(path) -> dict[str, tuple[np.float32, int, str]]:
    """tensor -> (scale, zero point, dtype) of every activation QuantizeLinear in the file."""
    m = onnx.load(str(path))
    c = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    outputs = {o.name for o in m.graph.output}
    # A Q/DQ on the graph output (ONNX Runtime quantizes the logits): in the float graph the scale is the output's.
    named = {n.input[0]: n.output[0] for n in m.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in outputs}
    return {named.get(n.output[0], n.input[0]): (np.float32(c[n.input[1]]), int(c[n.input[2]].ravel()[0]), c[n.input[2]].dtype.name)
            for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in c}


def _weights(path) -> list[tuple[bytes, bytes]]:
    """(int8 weight bytes, scale bytes) of every Conv/Gemm weight DequantizeLinear (sorted: tools order nodes differently)."""
    m = onnx.load(str(path))
    c = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}
    out = []
    for n in m.graph.node:
        if n.op_type in ("Conv", "Gemm") and (dq := producers.get(n.input[1])) is not None and dq.input[0] in c:
            out.append((c[dq.input[0]].tobytes(), c[dq.input[1]].astype(np.float32).tobytes()))
    return sorted(out)


def _bits(x) -> str:
    return struct.pack(">f", float(np.float32(x))).hex()


def _build(path, out, *extra):
    """`rescompile build` with the collector rigged to fail: a pre-quantized model is never calibrated."""
    def boom(*_a, **_k):
        raise AssertionError("statistics were collected: the model was calibrated again")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("rescompile.stages.calibrate.stage.collect_statistics", boom)
        mp.setattr("rescompile.stages.calibrate.collect.collect_statistics", boom)
        res = invoke("build", "--no-bench", path, "-o", out, *extra)
    assert res.exit_code == 0, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    return res


@pytest.fixture(scope="module")
def bundles(sources, tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    return {name: (_build(path, root / name, "--json"), root / name) for name, path in sources.items()}


def test_detection_names_the_tool_and_counts_the_nodes(sources, r20):
    assert quantized_source(r20.path) is None  # a float model
    ort = quantized_source(sources["ort-s8"])
    assert ort.tool == "ONNX Runtime quantization" and ort.producer.startswith("onnx.quantize") and ort.quantize_nodes > 20
    own = quantized_source(sources["rescompile"])
    assert own.tool is None and own.quantize_nodes > 20  # the producer is the exporter: no quantizer is claimed


def test_stripping_gives_back_the_float_graph(sources, r20):
    """ONNX Runtime folds each ReLU into a zero point of -128 and drops it: stripping puts it back, so the
    float graph has the original's ops and tensor names, and every scale is keyed by an FP32 tensor."""
    from collections import Counter

    fp32_ops = Counter(n.op_type for n in r20.onnx.graph.node)
    fp32_tensors = {o for n in r20.onnx.graph.node for o in n.output} | {"input"}
    for name in ("ort-s8", "ort-u8", "rescompile"):
        given = onnx.load(str(sources[name]))
        assert Counter(n.op_type for n in given.graph.node)["Relu"] < fp32_ops["Relu"] or name == "rescompile"
        stripped = strip_qdq(given)
        assert Counter(n.op_type for n in stripped.model.graph.node) == fp32_ops, name
        assert set(stripped.activations) <= fp32_tensors and stripped.activations, name
        assert all(w.values.dtype in (np.int8, np.int32) for w in stripped.weights.values())


@pytest.mark.parametrize("name", ["ort-s8-symmetric", "ort-s8", "ort-u8", "ort-u8-symmetric", "rescompile"])
def test_build_uses_the_given_scales_bit_for_bit(bundles, sources, name):
    res, out = bundles[name]
    summary = json.loads(res.stdout)
    assert summary["calibration"]["method"] == "prequantized"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"]["method"] == "prequantized" and manifest["calibration"]["lint_passed"]
    if name.startswith("ort"):
        assert manifest["calibration"]["provenance"]["tool"] == "ONNX Runtime quantization"
    cache = read_cache(out / "calibration.cache")
    written = _given_scales(out / "model_int8_qdq.onnx")
    pre = summary["calibration"]["prequantized"]
    exact = 0
    for tensor, (scale, zp, dtype) in _given_scales(sources[name]).items():
        lo, hi = INTEGERS[dtype]
        if (dtype, zp) in (("int8", 0), ("uint8", 128)):  # TensorRT's grid: the given scale, unchanged
            want = scale
            exact += 1
        else:  # asymmetric or unsigned: the range the given grid covers, and said so
            want = np.float32(float(scale) * max(zp - lo, hi - zp) / 127.0)
            assert tensor in pre["inexact_scales"]
        assert _bits(cache.scales[tensor]) == _bits(want), tensor
        if tensor in written:  # the TensorRT model quantizes it (branch outputs are left to the fused Add)
            assert _bits(written[tensor][0]) == _bits(want) and written[tensor][1:] == (0, "int8"), tensor
    if name in ("ort-s8-symmetric", "ort-u8-symmetric", "rescompile"):
        assert exact and not pre["inexact_scales"]
    assert _weights(out / "model_int8_qdq.onnx") == _weights(sources[name])  # the given int8 weights and scales
    assert not any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out / "model_fp32.onnx")).graph.node)


def test_the_cpu_artifact_comes_from_the_same_scales(bundles):
    _, out = bundles["ort-u8"]
    amax = {t: e["amax"] for t, e in json.loads((out / "scales.json").read_text())["tensors"].items()}
    cpu = onnx.load(str(out / "model_int8_cpu.onnx"))
    c = {t.name: numpy_helper.to_array(t) for t in cpu.graph.initializer}
    checked = 0
    for n in cpu.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in amax:
            assert c[n.input[2]].dtype == np.uint8  # uint8 activations, from the same amax
            assert _bits(c[n.input[1]]) in (_bits(amax[n.input[0]] / 255.0), _bits(amax[n.input[0]] / 127.0))
            checked += 1
    assert checked > 10


def test_placement_findings_are_reported_per_block(bundles):
    """ONNX Runtime quantizes the branch's last Conv output before the Add: the lint names each block, as a
    warning; the TensorRT model is re-placed. rescompile's own placement is kept as given."""
    res, out = bundles["ort-s8"]
    pre = json.loads((out / "accuracy.json").read_text())["prequantized"]
    assert len(pre["placement"]) == 9 and not pre["kept_as_given"]
    assert all(f["rule"] == "residual-branch" for r in pre["placement"] for f in r["findings"])
    assert sum(not r["suits_tensorrt"] for r in pre["placement"]) == 9
    assert any("does not suit TensorRT in 9 of 9 residual block" in w for w in pre["warnings"])
    assert json.loads((out / "manifest.json").read_text())["calibration"]["prequantized"]["placement"] == pre["placement"]
    own = json.loads((bundles["rescompile"][1] / "accuracy.json").read_text())["prequantized"]
    assert own["kept_as_given"] and all(r["suits_tensorrt"] for r in own["placement"])


def test_a_missing_skip_qdq_is_a_warning_per_block(sources, tmp_path):
    """The skip Q/DQ removed from rescompile's own model: each block says so; the build still succeeds."""
    m = onnx.load(str(sources["rescompile"]))
    producers = {o: n for n in m.graph.node for o in n.output}
    for add in (n for n in m.graph.node if n.op_type == "Add"):
        for i, x in enumerate(add.input):
            dq = producers.get(x)
            if dq is not None and dq.op_type == "DequantizeLinear" and "_skip_" in dq.output[0]:
                add.input[i] = producers[dq.input[0]].input[0]
    path = tmp_path / "noskip.onnx"
    onnx.save(m, str(path))
    _build(path, tmp_path / "b")
    pre = json.loads((tmp_path / "b" / "accuracy.json").read_text())["prequantized"]
    assert [f["rule"] for r in pre["placement"] for f in r["findings"]] == ["residual-skip"] * 9
    assert any("no Q/DQ on the skip input in 9" in w for w in pre["warnings"])


def test_fake_quantized_float_weights_as_qat_exports_write_them(sources, tmp_path):
    """PyTorch QAT and ModelOpt export Q -> DQ on float weights: the integers are read back bit for bit."""
    m = onnx.load(str(sources["rescompile"]))
    c = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    given = {}
    for dq in [n for n in m.graph.node if n.op_type == "DequantizeLinear" and c.get(n.input[0], np.zeros(0)).dtype == np.int8]:
        q, s = c[dq.input[0]], c[dq.input[1]]
        w = (q.astype(np.float32) * s.reshape([-1] + [1] * (q.ndim - 1))).astype(np.float32)
        m.graph.initializer.append(numpy_helper.from_array(w, dq.input[0] + "_float"))
        m.graph.node.insert(list(m.graph.node).index(dq), onnx.helper.make_node(
            "QuantizeLinear", [dq.input[0] + "_float", dq.input[1], dq.input[2]], [dq.input[0] + "_fq"], axis=0))
        given[dq.output[0]] = q
        dq.input[0] = dq.input[0] + "_fq"
    path = tmp_path / "fakequant.onnx"
    onnx.save(m, str(path))
    stripped = strip_qdq(onnx.load(str(path)))
    assert given and all(np.array_equal(stripped.weights[k].values, v) for k, v in given.items())
    _build(path, tmp_path / "b")
    assert _given_scales(tmp_path / "b" / "model_int8_qdq.onnx") == _given_scales(sources["rescompile"])


def test_every_calibrator_setting_builds_without_recalibrating(sources, tmp_path):
    for method in METHODS:
        res = _build(sources["ort-s8"], tmp_path / method, "--method", method, "--json")
        assert json.loads(res.stdout)["calibration"]["method"] == "prequantized"


def test_fp32_reference_gives_an_accuracy_entry(sources, r20, tmp_path):
    res = _build(sources["ort-s8"], tmp_path / "b", "--fp32-reference", r20.path, "--json")
    acc = json.loads(res.stdout)["calibration"]["accuracy"]
    assert acc["evaluated"] and "--fp32-reference" in acc["fp32_reference"]
    for key in ("fp32", "int8_given_reference", "int8_tensorrt_reference", "int8_cpu_onnxruntime"):
        assert 0.0 <= acc[key]["top1"] <= 1.0 and acc[key]["images"] == acc["images"]
    assert acc["int8_given_reference"]["drop_points"] is not None
    # Without it, the reference is the stripped graph, and the report says what that does not measure.
    plain = json.loads(_build(sources["ort-s8"], tmp_path / "c", "--json").stdout)["calibration"]["accuracy"]
    assert "measures nothing about the original quantization" in plain["fp32_reference"]


def test_fp32_reference_on_a_float_model_is_refused(r20, tmp_path):
    one_line_error(invoke("build", "--no-bench", r20.path, "-o", tmp_path / "b", "--fp32-reference", r20.path), "already quantized")


def test_calibrate_refuses_a_quantized_model_in_one_line(sources, tmp_path):
    res = invoke("calibrate", sources["ort-s8"], "-o", tmp_path / "out")
    one_line_error(res, "already quantized")
    assert "QuantizeLinear nodes" in res.stderr and "rescompile build" in res.stderr
    assert not (tmp_path / "out").exists()


def test_the_library_calibrate_refuses_it_too(sources, r20, tmp_path):
    from rescompile.errors import ModelError
    from rescompile.stages.calibrate.stage import calibrate

    with pytest.raises(ModelError, match="already quantized"):
        calibrate(onnx.load(str(sources["ort-s8"])), r20.spec, tmp_path)


def test_qoperator_models_are_refused_in_one_line(r20, digits, tmp_path):
    qop = _ort(r20, digits, tmp_path / "qop.onnx", fmt="QOperator")
    with pytest.raises(Exception, match="QOperator"):
        inspect_quantization(onnx.load(str(qop)), qop)
    one_line_error(invoke("build", "--no-bench", qop, "-o", tmp_path / "b"), "QOperator")
    one_line_error(invoke("calibrate", qop, "-o", tmp_path / "c"), "QOperator")


def test_nncf_model_builds_with_its_scales(nncf_source, tmp_path):
    """NNCF: unsigned post-ReLU activations (converted by range, with a warning), int8 per-channel weights."""
    res = _build(nncf_source, tmp_path / "b", "--json")
    pre = json.loads(res.stdout)["calibration"]["prequantized"]
    cache = read_cache(tmp_path / "b" / "calibration.cache")
    for tensor, (scale, zp, dtype) in _given_scales(nncf_source).items():
        lo, hi = INTEGERS[dtype]
        exact = (dtype, zp) in (("int8", 0), ("uint8", 128))
        want = scale if exact else np.float32(float(scale) * max(zp - lo, hi - zp) / 127.0)
        assert _bits(cache.scales[tensor]) == _bits(want), tensor
    assert pre["inexact_scales"] and any("not symmetric int8" in w for w in pre["warnings"])
    assert _weights(tmp_path / "b" / "model_int8_qdq.onnx") == _weights(nncf_source)
