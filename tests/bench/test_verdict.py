"""The verdict on constructed measurements: rescompile's fastest CPU INT8 against the fastest peer."""

from __future__ import annotations

from pathlib import Path

from rescompile.bench.backends import Backend
from rescompile.bench.report import verdict_and_warnings
from rescompile.bench.run import Accuracy, BenchReport, Measurement
from rescompile.bench.timing import TimingStats

NAMES = {
    "torch-fp32": ("PyTorch FP32 eager", "fp32"), "ort-fp32": ("ONNX Runtime FP32", "fp32"),
    "ort-int8": ("ONNX Runtime INT8 (CPU artifact)", "int8"), "ort-int8-pixels": ("ONNX Runtime INT8 (CPU artifact, pixels in)", "int8"),
    "ov-int8": ("OpenVINO INT8 (rescompile)", "int8"), "ort-int8-qstatic": ("ONNX Runtime INT8 (quantize_static)", "int8"),
    "ov-int8-nncf": ("OpenVINO INT8 (NNCF quantize)", "int8"),
}
PEERS = ("ort-int8-qstatic", "ov-int8-nncf")


def made(p50: dict[str, float | dict[int, float]], top1: dict[str, float], environment: dict | None = None) -> BenchReport:
    """A report of ``p50`` (ms, at batch 1 or per batch) and ``top1``, against PyTorch FP32 eager."""
    backends = [Backend(k, NAMES[k][0], NAMES[k][1], "cpu", reference=k == "torch-fp32", comparison=k in PEERS) for k in p50]
    per_batch = {k: v if isinstance(v, dict) else {1: v} for k, v in p50.items()}
    measurements = [Measurement(k, b, TimingStats(b, [ms] * 5)) for k, v in per_batch.items() for b, ms in v.items()]
    for m in measurements:
        m.speedup = per_batch["torch-fp32"][m.batch] / m.stats.p50
    accuracy = [Accuracy(k, t, 1.0, 1.0, 100) for k, t in top1.items()]
    return BenchReport(Path("b"), "resnet20", environment or {}, backends, measurements, accuracy, "torch-fp32", "")


TOP1 = {"torch-fp32": 0.95, "ort-int8": 0.95, "ov-int8": 0.95, "ort-int8-qstatic": 0.942, "ov-int8-nncf": 0.948}


def test_the_verdict_names_the_fastest_peer_and_the_ratio():
    rep = made({"torch-fp32": 4.0, "ort-int8": 1.5, "ov-int8": 1.0, "ort-int8-qstatic": 1.6, "ov-int8-nncf": 1.05}, TOP1)
    verdict, warnings = verdict_and_warnings(rep)
    assert verdict == ("OpenVINO INT8 (rescompile) is 4.0x faster than PyTorch FP32 eager at batch 1 with +0.0 points top-1; "
                       "rescompile's fastest CPU INT8 (OpenVINO INT8 (rescompile)) is 1.05x faster than the fastest peer, "
                       "NNCF + OpenVINO (+0.0 vs -0.2 points top-1)")
    assert not any("slower than" in w for w in warnings)


def test_a_faster_peer_is_named_in_the_verdict_and_a_warning():
    rep = made({"torch-fp32": 4.0, "ort-int8": 1.0, "ov-int8": 1.2, "ort-int8-qstatic": 0.8, "ov-int8-nncf": 0.9}, TOP1)
    verdict, warnings = verdict_and_warnings(rep)
    assert verdict.endswith("; rescompile's fastest CPU INT8 (ONNX Runtime INT8 (CPU artifact)) is 1.25x slower than the fastest peer, "
                            "ONNX Runtime quantize_static (+0.0 vs -0.8 points top-1)")
    assert ("rescompile's fastest CPU INT8 (ONNX Runtime INT8 (CPU artifact)) is slower than ONNX Runtime quantize_static "
            "at batch 1 (1.00 vs 0.80 ms p50)") in warnings


def test_the_smallest_batch_decides_and_one_peer_is_named_plainly():
    rep = made({"torch-fp32": {1: 4.0, 8: 20.0}, "ort-int8": {1: 2.0, 8: 4.0}, "ov-int8": {1: 1.0, 8: 6.0},
                "ort-int8-qstatic": {1: 1.1, 8: 3.0}}, {}, environment={"input": "uint8 pixels"})
    verdict, warnings = verdict_and_warnings(rep)
    assert verdict.endswith("; rescompile's fastest CPU INT8 (OpenVINO INT8 (rescompile)) is 1.10x faster than ONNX Runtime "
                            "quantize_static (top-1 not measured), both from uint8 pixels")
    assert not any("slower than ONNX Runtime quantize_static" in w for w in warnings)


def test_the_pixel_input_artifact_counts_as_rescompile_s_and_peers_alone_say_nothing():
    rep = made({"torch-fp32": 4.0, "ort-int8": 2.0, "ort-int8-pixels": 1.0, "ov-int8-nncf": 1.5}, {})
    verdict, _ = verdict_and_warnings(rep)
    assert "rescompile's fastest CPU INT8 (ONNX Runtime INT8 (CPU artifact, pixels in)) is 1.50x faster than NNCF + OpenVINO" in verdict
    alone = made({"torch-fp32": 4.0, "ort-fp32": 3.0, "ort-int8-qstatic": 1.0}, {})
    verdict, _ = verdict_and_warnings(alone)
    assert verdict.startswith("ONNX Runtime FP32 is 1.3x faster") and "peer" not in verdict and "rescompile's" not in verdict
