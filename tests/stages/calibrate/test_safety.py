"""The safety net and the per-tensor report, on a model of the kind the entropy search used to
break (input normalised outside the graph, a background spike) and on planted bad scales."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rescompile.stages.calibrate import calibrators
from tests.cli.test_cli import invoke
from tests.foreign.corpus import reference_outputs, trained_normalised_digits


@pytest.fixture(scope="module")
def spiky(tmp_path_factory):
    """Digits normalised with MNIST-like statistics: background -0.45, strokes up to +3.0."""
    folder = tmp_path_factory.mktemp("spiky")
    f, data = trained_normalised_digits(folder, stats=(0.13, 0.29), name="spiky_digits")
    np.save(folder / "calib.npy", data["calib"])
    np.savez(folder / "eval.npz", images=data["eval_x"], labels=data["eval_y"])
    return f, data, folder


@pytest.fixture(scope="module")
def raw255(tmp_path_factory):
    """The same network taking raw 0-255 pixels (MLPerf Tiny style): mean 0, std 1/255."""
    folder = tmp_path_factory.mktemp("raw255")
    f, data = trained_normalised_digits(folder, stats=(0.0, 1.0 / 255.0), name="raw_digits")
    np.save(folder / "calib.npy", data["calib"])
    return f, data, folder


def held_out(f, data, out):
    """Top-1 drop (points) and agreement over the whole held-out set (540 images), for the Q/DQ
    model as TensorRT computes it and the CPU artifact as ONNX Runtime deploys it."""
    import onnxruntime as ort

    x, y = data["eval_x"], data["eval_y"]
    ref = reference_outputs(f.path, x).argmax(1)
    qdq = reference_outputs(out / "model_int8_qdq.onnx", x).argmax(1)
    cpu_session = ort.InferenceSession(str(out / "model_int8_cpu.onnx"), providers=["CPUExecutionProvider"])
    cpu = cpu_session.run(None, {cpu_session.get_inputs()[0].name: x})[0].argmax(1)
    fp32 = (ref == y).mean()
    return {name: (100 * (fp32 - (p == y).mean()), (p == ref).mean()) for name, p in (("qdq", qdq), ("cpu", cpu))}


@pytest.mark.parametrize("method", ["entropy", "max", "percentile", "mse"])
def test_every_calibrator_holds_on_a_spiky_normalised_input(spiky, method, tmp_path):
    f, data, folder = spiky
    out = tmp_path / method
    res = invoke("calibrate", f.path, "--data", folder / "calib.npy", "--eval-data", folder / "eval.npz", "--method", method,
                 "--no-fallback", "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    for name, (drop, agreement) in held_out(f, data, out).items():
        assert drop <= 0.3 and agreement >= 0.99, (method, name, drop, agreement)
        if method == "entropy":  # the default: tighter
            assert drop <= 0.1 and agreement >= 0.995, (name, drop, agreement)


def test_every_calibrator_holds_on_raw_pixel_input(raw255, tmp_path):
    f, data, folder = raw255
    assert data["calib"].max() > 200  # really 0-255
    for method in ("entropy", "max", "percentile", "mse"):
        out = tmp_path / method
        res = invoke("calibrate", f.path, "--data", folder / "calib.npy", "--method", method, "--no-fallback", "-o", out, "--json")
        assert res.exit_code == 0, res.stderr
        for name, (drop, agreement) in held_out(f, data, out).items():
            assert drop <= 0.3 and agreement >= 0.99, (method, name, drop, agreement)


def test_the_report_shows_the_input_unclipped_and_each_calibrator(spiky, tmp_path):
    f, data, folder = spiky
    res = invoke("calibrate", f.path, "--data", folder / "calib.npy", "-o", tmp_path / "o", "--report", "--json")
    assert res.exit_code == 0, res.stderr
    rows = {r["tensor"]: r for r in json.loads(res.stdout)["tensors"]}
    first = rows["input"]
    assert first["network_input"] and first["clipped"] == 0.0 and first["amax"] >= 3.0 - 1e-6
    others = [r for r in rows.values() if not r["network_input"]]
    assert others and all(set(r["calibrators"]) == {"entropy", "percentile 99.99", "mse", "max"} for r in others)
    assert all(0.0 <= r["clipped"] < 0.01 for r in others)  # nothing loses more than 1% of its values
    saved = json.loads((tmp_path / "o" / "accuracy.json").read_text())
    assert len(saved["tensors"]) == len(rows) and saved["safety_net"]["checked"]


@pytest.fixture
def planted(monkeypatch):
    """Entropy scales with one tensor's amax 100x too small (the stem's ReLU output)."""
    real = calibrators.CALIBRATORS["entropy"]

    def bad(s, **kw):
        value = real(s, **kw)
        return value / 100 if "stem.2/Relu" in s.name else value

    monkeypatch.setitem(calibrators.CALIBRATORS, "entropy", bad)
    return "/stem/stem.2/Relu_output_0"


def test_a_planted_bad_scale_trips_the_safety_net_and_is_named(spiky, planted, tmp_path):
    f, data, folder = spiky
    out = tmp_path / "o"
    res = invoke("calibrate", f.path, "--data", folder / "calib.npy", "--eval-data", folder / "eval.npz", "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    safety = json.loads(res.stdout)["safety_net"]
    assert safety["changed"] and planted in safety["note"] and "kept" in safety["note"]
    first = safety["candidates"][0]
    assert first["most_clipped"]["tensor"] == planted and first["top1_agreement"] < 0.98
    drop, agreement = held_out(f, data, out)["qdq"]
    assert drop <= 1.0 and agreement >= 0.98  # what was written holds


def test_no_fallback_keeps_the_bad_scales(spiky, planted, tmp_path):
    f, data, folder = spiky
    out = tmp_path / "o"
    res = invoke("calibrate", f.path, "--data", folder / "calib.npy", "--eval-data", folder / "eval.npz", "--no-fallback", "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    assert not json.loads(res.stdout)["safety_net"]["checked"]
    assert held_out(f, data, out)["qdq"][1] < 0.98


def test_when_nothing_holds_calibration_stops_and_writes_nothing(spiky, monkeypatch, tmp_path):
    f, data, folder = spiky
    real = calibrators.compute_amax

    def all_bad(stats, method, percentile=99.99, full_range=None):
        return {t: a / 1000 for t, a in real(stats, method, percentile, full_range).items()}

    monkeypatch.setattr("rescompile.stages.calibrate.stage.compute_amax", all_bad)
    out = tmp_path / "o"
    res = invoke("calibrate", f.path, "--data", folder / "calib.npy", "--eval-data", folder / "eval.npz", "-o", out)
    assert res.exit_code != 0
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "INT8 does not hold" in errors[0] and "--no-fallback" in errors[0]
    assert "percentile 99.99: agreement" in res.stderr  # the table of what was tried
    assert not out.exists()
