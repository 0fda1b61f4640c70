"""rescompile bench on a real bundle: every backend, ratios, accuracy, files, plots, verdict."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys

import pytest

from rescompile._lazy import has_module
from rescompile.bench import run_bench
from rescompile.bench.env import parse_tegrastats_power
from rescompile.bench.report import latency_figure, speedup_figure, verdict_and_warnings
from rescompile.bundle import read_manifest
from rescompile.config import BenchConfig, BuildConfig, CalibConfig
from rescompile.errors import ConfigError
from tests.cli.test_cli import invoke, one_line_error
from tests.tolerance import Tolerance

FAST = dict(warmup_s=0.05, min_runs=5, max_s=0.2, max_eval_images=120)
# The INT8 backends of a model trained for five epochs in this session, on 120 test images: the
# borderline images differ from CPU to CPU, so INT8 may differ from FP32 on a few of them.
INT8_DIFFER = Tolerance(3, 120, "a briefly trained model's borderline images; a wrong backend differs on dozens")
INT8_GAP = Tolerance(3, 120, "top-1 within 3 images of FP32, either way")
PIXELS_GAP = Tolerance(2, 120, "the pixel-input artifact differs from the float one only on the padding border")


@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory):
    from rescompile.pipeline import build

    out = tmp_path_factory.mktemp("bench") / "b"
    build(BuildConfig(source=str(trained.checkpoint), output_dir=out, calib=CalibConfig(num_images=64), bench=False))
    return out


def runs_ov(bundle) -> bool:
    """ov-int8 is in the lineup: openvino is installed and the bundle has its OpenVINO form."""
    return has_module("openvino") and read_manifest(bundle).has("openvino_int8_onnx")


def default_keys(bundle, *pixels: str) -> list[str]:
    """The default lineup here: rescompile's backends, then both peers (nncf where it can run)."""
    return ["torch-fp32", "ort-fp32", "ort-int8", *pixels, *(["ov-int8"] if runs_ov(bundle) else []), "ort-int8-qstatic",
            *(["ov-int8-nncf"] if has_module("nncf") and has_module("openvino") else [])]


@pytest.fixture(scope="module")
def ov_bundle(bundle, tmp_path_factory):
    """The bundle with its OpenVINO form: as built when the build wrote one, else a copy whose
    OpenVINO form is the CPU artifact (the same Q/DQ scales, which OpenVINO also runs)."""
    if read_manifest(bundle).has("openvino_int8_onnx"):
        return bundle
    copy = tmp_path_factory.mktemp("ov") / "b"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("bench"))
    doc = json.loads((copy / "manifest.json").read_text())
    src = copy / doc["files"]["cpu_int8_onnx"]["path"]
    shutil.copyfile(src, copy / "model_int8_openvino.onnx")
    data = (copy / "model_int8_openvino.onnx").read_bytes()
    doc["files"]["openvino_int8_onnx"] = {"path": "model_int8_openvino.onnx", "sha256": hashlib.sha256(data).hexdigest(),
                                          "bytes": len(data)}
    doc["cpu_artifact"]["openvino"] = {"path": "model_int8_openvino.onnx", "precision": "int8"}
    (copy / "manifest.json").write_text(json.dumps(doc))
    return copy


@pytest.fixture(scope="module")
def report(bundle):
    return run_bench(BenchConfig(bundle=bundle, batch_sizes=(1, 4), threads=1, **FAST))


def test_every_backend_at_every_batch_against_pytorch(report, bundle):
    keys = [b.key for b in report.backends]
    assert keys == default_keys(bundle) and report.reference == "torch-fp32"
    assert {(m.key, m.batch) for m in report.measurements} == {(k, b) for k in keys for b in (1, 4)}
    for m in report.measurements:
        assert m.stats.runs >= 5 and m.stats.warmup_runs >= 3 and len(m.stats.samples_ms) == m.stats.runs
        ref = report.get("torch-fp32", m.batch)
        assert m.speedup == pytest.approx(ref.stats.p50 / m.stats.p50)
    assert report.get("torch-fp32", 1).speedup == 1.0


def test_accuracy_of_every_backend(report):
    acc = {a.key: a for a in report.accuracy}
    assert set(acc) == {b.key for b in report.backends}
    assert acc["torch-fp32"].agreement == 1.0 and acc["torch-fp32"].images == 120
    assert acc["ort-fp32"].cosine > 0.99999  # FP32 both: the same logits up to float rounding
    INT8_DIFFER.check_agreement_rate(acc["ort-int8"].agreement, "ort-int8")
    assert acc["torch-fp32"].top1 >= 0.95  # floor: a sanity check on the fixture, far above chance (10%)
    INT8_GAP.check_gap_points(100 * (acc["torch-fp32"].top1 - acc["ort-int8"].top1), "ort-int8")


def test_files_verdict_and_environment(report, bundle):
    files = report.files
    data = json.loads(files["json"].read_text())
    assert data["environment"]["threads"] == 1 and data["environment"]["cpu_cores"] >= 1
    assert data["environment"]["versions"]["onnxruntime"]
    assert sum(len(m["samples_ms"]) for m in data["measurements"]) == sum(m.stats.runs for m in report.measurements)
    md = files["markdown"].read_text()
    assert report.verdict in md and "| PyTorch FP32 eager |" in md and "Accuracy on 120 labelled images" in md
    assert files["latency_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and files["speedup_png"].parent == bundle / "bench"
    assert report.verdict.startswith(("ONNX Runtime INT8 (CPU artifact) is ", "OpenVINO INT8 (rescompile) is "))
    assert "than PyTorch FP32 eager at batch 1 with" in report.verdict
    # The peers, on by default: rescompile's fastest CPU INT8 against the fastest of them.
    assert "; rescompile's fastest CPU INT8 (" in report.verdict and " points top-1)" in report.verdict
    two = len([k for k in report_keys(report) if k in ("ort-int8-qstatic", "ov-int8-nncf")]) == 2
    assert ("than the fastest peer, " if two else "than ONNX Runtime quantize_static (") in report.verdict
    assert set(data["environment"]["cpu_flags"]) <= {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"}


def report_keys(report) -> list[str]:
    return [b.key for b in report.backends]


def test_the_peer_is_onnx_runtime_quantize_static_on_the_same_images(report, bundle):
    import onnx

    peer = report.backend("ort-int8-qstatic")
    assert peer.comparison and peer.name == "ONNX Runtime INT8 (quantize_static)"
    model = onnx.load(str(bundle / "bench" / "peer_ort_quantize_static.onnx"))
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) > 10  # quantized by ORT, QDQ format
    abouts = report.environment["peers"]
    assert len(abouts) == len([b for b in report.backends if b.comparison])  # every peer says how it was made
    (about,) = [a for a in abouts if a.startswith("ONNX Runtime quantize_static")]
    assert about.startswith("ONNX Runtime quantize_static (QDQ, U8S8") and "calibrated on 64 images of" in about
    assert "digits" in about and "not byte-identical" not in about
    assert not any("quantize_static (QDQ" in w for w in report.warnings)  # a description, not a warning
    assert f"Peer: {about}" in report.files["markdown"].read_text()
    none = run_bench(BenchConfig(bundle=bundle, batch_sizes=(1,), peers=(), output_dir=bundle.parent / "np", **FAST))
    assert "ort-int8-qstatic" not in [b.key for b in none.backends]
    with pytest.raises(ConfigError, match="unknown peer"):
        run_bench(BenchConfig(bundle=bundle, batch_sizes=(1,), peers=("tvm",), **FAST))


def test_from_pixels_times_every_backend_from_uint8_and_adds_the_pixel_artifact(bundle, monkeypatch):
    import numpy as np

    from rescompile.data.preprocess import Preprocessing

    normalised = []
    plain = Preprocessing.normalize

    def counting(self, batch):
        normalised.append(np.asarray(batch).shape)
        return plain(self, batch)

    monkeypatch.setattr(Preprocessing, "normalize", counting)
    rep = run_bench(BenchConfig(bundle=bundle, batch_sizes=(1,), threads=1, from_pixels=True, peers=("ort",),
                                output_dir=bundle.parent / "px", **FAST))
    keys = [b.key for b in rep.backends]
    assert keys == [k for k in default_keys(bundle, "ort-int8-pixels") if k != "ov-int8-nncf"]
    assert rep.backend("ort-int8-pixels").takes_pixels and not rep.backend("ort-int8").takes_pixels
    # Every float-input backend normalised the same uint8 batch inside each timed (and warmup) call.
    floats = [m for m in rep.measurements if m.key != "ort-int8-pixels"]
    assert normalised.count((1, 32, 32, 3)) >= sum(m.stats.runs + m.stats.warmup_runs for m in floats)
    acc = {a.key: a for a in rep.accuracy}
    INT8_DIFFER.check_agreement_rate(acc["ort-int8-pixels"].agreement, "ort-int8-pixels")
    PIXELS_GAP.check_gap_points(100 * (acc["ort-int8"].top1 - acc["ort-int8-pixels"].top1), "ort-int8-pixels")
    assert "; rescompile's fastest CPU INT8 (" in rep.verdict and "than ONNX Runtime quantize_static (" in rep.verdict
    assert rep.verdict.endswith("both from uint8 pixels")
    assert rep.environment["input"].startswith("uint8 pixels") and "Input: uint8 pixels" in rep.files["markdown"].read_text()
    res = invoke("bench", bundle, "--from-pixels", "--batch-sizes", "1", "--threads", "1", "--warmup-s", "0.05", "--min-runs", "3",
                 "--max-s", "0.1", "--rounds", "1", "--peers", "none", "--backends", "ort-int8,ort-int8-pixels", "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert [b["key"] for b in data["backends"]] == ["torch-fp32", "ort-int8", "ort-int8-pixels"] and data["environment"]["input"]


def test_plots_have_labelled_axes_and_one_line_per_backend(report):
    fig = latency_figure(report)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "batch size" and ax.get_ylabel() == "latency p50 (ms)"
    assert [line.get_label() for line in ax.get_lines()] == [b.name for b in report.backends]
    bars = speedup_figure(report).axes[0]
    assert bars.get_ylabel().startswith("speed-up vs PyTorch FP32 eager") and len(bars.patches) == len(report.backends) * 2


def test_warning_when_int8_is_not_faster(report):
    from dataclasses import replace

    from rescompile.bench.timing import TimingStats

    slow = replace(report)
    slow.measurements = [
        replace(m, stats=TimingStats(m.batch, [1000.0] * 5)) if m.key == "ort-int8" else m for m in report.measurements
    ]
    _, warnings = verdict_and_warnings(slow)
    assert any("ONNX Runtime INT8 (CPU artifact) is not faster than ONNX Runtime FP32 at batch 1" in w for w in warnings)


def test_backend_filter_and_bad_options(bundle, tmp_path):
    r = run_bench(BenchConfig(bundle=bundle, batch_sizes=(2,), backends=("ort-int8",), output_dir=tmp_path, **FAST))
    assert [b.key for b in r.backends] == ["torch-fp32", "ort-int8"]  # the reference always runs
    with pytest.raises(ConfigError, match="batch sizes must be positive"):
        run_bench(BenchConfig(bundle=bundle, batch_sizes=(0,)))


def test_ov_int8_runs_the_openvino_form_and_brings_the_peers(ov_bundle, tmp_path):
    pytest.importorskip("openvino")
    rep = run_bench(BenchConfig(bundle=ov_bundle, batch_sizes=(1,), threads=1, backends=("ov-int8", "ort-int8-qstatic"),
                                output_dir=tmp_path, **FAST))
    assert [b.key for b in rep.backends] == ["torch-fp32", "ov-int8", "ort-int8-qstatic"]  # the peer comes with ov-int8 alone
    ov = rep.backend("ov-int8")
    assert ov.name == "OpenVINO INT8 (rescompile)" and ov.precision == "int8" and ov.device == "cpu" and not ov.comparison
    m = rep.get("ov-int8", 1)
    assert m.stats.runs >= 5 and m.speedup == pytest.approx(rep.get("torch-fp32", 1).stats.p50 / m.stats.p50)
    INT8_DIFFER.check_agreement_rate(rep.accuracy_of("ov-int8").agreement, "ov-int8")
    assert "; rescompile's fastest CPU INT8 (OpenVINO INT8 (rescompile)) is " in rep.verdict
    assert "than ONNX Runtime quantize_static (" in rep.verdict


def test_without_openvino_ov_int8_steps_aside_with_a_note(ov_bundle, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    rep = run_bench(BenchConfig(bundle=ov_bundle, batch_sizes=(1,), threads=1, backends=("ort-int8", "ov-int8"), peers=(),
                                output_dir=tmp_path, **FAST))
    assert [b.key for b in rep.backends] == ["torch-fp32", "ort-int8"]
    (note,) = [w for w in rep.warnings if "OpenVINO is not installed" in w]
    assert "pip install 'rescompile[openvino]'" in note


def test_cli_bench_json_and_errors(bundle, tmp_path):
    res = invoke("bench", bundle, "--batch-sizes", "1", "--threads", "1", "--warmup-s", "0.05", "--min-runs", "5", "--max-s", "0.2",
                 "--max-eval-images", "50", "-o", tmp_path / "r", "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["verdict"] and (tmp_path / "r" / "report.md").exists() and "samples_ms" not in data["measurements"][0]
    one_line_error(invoke("bench", tmp_path / "nothing"), "no bundle directory")
    bad = invoke("bench", bundle, "--batch-sizes", "1,x")
    assert bad.exit_code == 2 and "comma-separated integers" in bad.stderr


def test_tegrastats_power_lines():
    orin = "RAM 2448/30536MB CPU [1%@729] GR3D_FREQ 0% VDD_GPU_SOC 2397mW/2397mW VDD_CPU_CV 399mW/399mW VDD_IN 5123mW/5012mW"
    assert parse_tegrastats_power(orin) == pytest.approx(5.123)
    xavier = "RAM 1903/7772MB ... GPU 0%@114 POM_5V_IN 3284/3284 POM_5V_GPU 0/0"
    assert parse_tegrastats_power(xavier) == pytest.approx(3.284)
    assert parse_tegrastats_power("RAM 100/200MB") is None


def test_a_cpu_feature_mask_is_named_with_the_flags(monkeypatch):
    from rescompile.bench.env import describe_cpu_flags, environment

    monkeypatch.delenv("RESCOMPILE_CPU_MASK", raising=False)
    plain = environment(1)
    assert "cpu_mask" not in plain and "hidden" not in describe_cpu_flags(plain)
    monkeypatch.setenv("RESCOMPILE_CPU_MASK", "AVX-512/VNNI/AMX hidden by benchmarks/without_vnni.py")
    masked = environment(1)
    assert masked["cpu_flags"] == plain["cpu_flags"]  # the flags stay what /proc/cpuinfo lists
    assert describe_cpu_flags(masked).endswith("; AVX-512/VNNI/AMX hidden by benchmarks/without_vnni.py")
