"""The nncf bench peer: NNCF's quantize of the bundle's optimized ONNX on its own calibration
images, run on OpenVINO, measured in the same rounds as the bundle's backends."""

from __future__ import annotations

import json
import sys

import onnx
import pytest

from rescompile.bench import run_bench
from rescompile.config import BenchConfig
from tests.bench.test_bench import FAST, bundle, runs_ov  # noqa: F401  the module's bundle fixture
from tests.tolerance import Tolerance

# NNCF's own scales and OpenVINO's int8 kernels on 120 images of a briefly trained model: its
# borderline images may flip; a peer fed the wrong input or left unquantized differs on dozens.
NNCF_GAP = Tolerance(4, 120, "another tool's INT8 of a briefly trained model; a broken peer differs on dozens")


@pytest.fixture(scope="module")
def report(bundle):  # noqa: F811
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    return run_bench(BenchConfig(bundle=bundle, batch_sizes=(1, 4), threads=1, output_dir=bundle.parent / "nncf-bench", **FAST))


def test_both_peers_are_measured_by_default(report, bundle):  # noqa: F811
    keys = [b.key for b in report.backends]
    assert keys == ["torch-fp32", "ort-fp32", "ort-int8", *(["ov-int8"] if runs_ov(bundle) else []), "ort-int8-qstatic", "ov-int8-nncf"]
    assert [b.key for b in report.backends if b.comparison] == ["ort-int8-qstatic", "ov-int8-nncf"]
    peer = report.backend("ov-int8-nncf")
    assert peer.comparison and peer.precision == "int8" and peer.device == "cpu" and peer.build_seconds > 0
    for batch in (1, 4):
        m = report.get("ov-int8-nncf", batch)
        assert m.stats.runs >= 5 and len(m.stats.samples_ms) == m.stats.runs and m.stats.p50 > 0
        assert m.speedup == pytest.approx(report.get("torch-fp32", batch).stats.p50 / m.stats.p50)
    acc = report.accuracy_of("ov-int8-nncf")
    assert acc.images == 120 and acc.cosine > 0.95
    NNCF_GAP.check_agreement_rate(acc.agreement, "ov-int8-nncf")
    NNCF_GAP.check_gap_points(100 * (report.accuracy_of("torch-fp32").top1 - acc.top1), "ov-int8-nncf")
    nncf_about, ort_about = sorted(report.environment["peers"])  # both peers say how they were made
    assert nncf_about.startswith("NNCF ") and "OpenVINO" in nncf_about and "calibrated on 64 images" in nncf_about
    assert ort_about.startswith("ONNX Runtime quantize_static")
    assert "than the fastest peer, " in report.verdict


def test_the_nncf_peer_file_is_quantized_onnx(report, bundle):  # noqa: F811
    model = onnx.load(str(bundle.parent / "nncf-bench" / "peer_nncf.onnx"))
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) > 10
    data = json.loads(report.files["json"].read_text())
    assert "ov-int8-nncf" in {m["backend"] for m in data["measurements"]}


def test_a_missing_nncf_steps_aside_with_a_note(bundle, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "nncf", None)
    rep = run_bench(BenchConfig(bundle=bundle, batch_sizes=(1,), peers=("nncf",), backends=("ort-int8", "ov-int8-nncf"),
                                output_dir=bundle.parent / "no-nncf", **FAST))
    assert [b.key for b in rep.backends] == ["torch-fp32", "ort-int8"]
    assert any("NNCF + OpenVINO is not compared" in w and "pip install 'rescompile[nncf]'" in w for w in rep.warnings)


def test_backends_list_selects_the_peers_that_run(bundle):  # noqa: F811
    rep = run_bench(BenchConfig(bundle=bundle, batch_sizes=(1,), peers=("ort", "nncf"), backends=("ort-int8", "ort-int8-qstatic"),
                                output_dir=bundle.parent / "only-ort", **FAST))
    assert [b.key for b in rep.backends] == ["torch-fp32", "ort-int8", "ort-int8-qstatic"]
