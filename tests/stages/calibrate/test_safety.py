"""The safety net and the per-tensor report, on a model of the kind the entropy search used to
break (input normalised outside the graph, a background spike) and on planted bad scales."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rescompile.stages.calibrate import calibrators
from tests.cli.test_cli import invoke
from tests.foreign.corpus import reference_outputs, trained_normalised_digits
from tests.tolerance import Tolerance


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


HELD_OUT = 540  # the fixtures' held-out split (30% of scikit-learn's 1,797 digits)

# What a calibrator may cost on these models, in held-out images. The fixtures are trained on the
# machine the test runs on, so which borderline images flip moves from CPU to CPU: over five
# training seeds every calibrator lost at most 1 image and changed at most 1 prediction natively
# (Xeon, AVX-512/VNNI/AMX) and at most 2 and 2 on AVX2 kernels; an AMD EPYC with AVX-512 VNNI saw
# entropy lose 1 and change 2 (benchmarks/tolerance_noise.py). The bounds sit above that band and far below the
# failures they guard against: TensorRT's plain entropy threshold, without rescompile's floor at
# the 99.99th percentile, loses 13 to 413 of these images; the clipped stem that first showed it
# cost 0.83 points on a resnet18 (4.5 images of 540).
ANY_LOST = Tolerance(3, HELD_OUT, "every calibrator: noise of 1-2 images, a clipping failure costs 13 or more")
ANY_DIFFER = Tolerance(5, HELD_OUT, "every calibrator: agreement >= 99.07% with FP32")
DEFAULT_LOST = Tolerance(2, HELD_OUT, "the default: twice the 1 image entropy lost on any CPU; the clipped stem cost 4.5")
DEFAULT_DIFFER = Tolerance(4, HELD_OUT, "the default: twice the 2 predictions entropy changed on any CPU; the clipped stem changed 4.5")


def held_out(f, data, out):
    """Per artifact, the predictions and FP32's over the whole held-out set (540 images): the Q/DQ
    model as TensorRT computes it and the CPU artifact as ONNX Runtime deploys it."""
    import onnxruntime as ort

    x = data["eval_x"]
    assert len(x) == HELD_OUT
    ref = reference_outputs(f.path, x).argmax(1)
    qdq = reference_outputs(out / "model_int8_qdq.onnx", x).argmax(1)
    cpu_session = ort.InferenceSession(str(out / "model_int8_cpu.onnx"), providers=["CPUExecutionProvider"])
    cpu = cpu_session.run(None, {cpu_session.get_inputs()[0].name: x})[0].argmax(1)
    return {"qdq": (qdq, ref), "cpu": (cpu, ref)}


def check_held_out(f, data, out, lost: Tolerance, differ: Tolerance, context) -> None:
    for name, (pred, ref) in held_out(f, data, out).items():
        lost.check_drop(pred, ref, data["eval_y"], (context, name))
        differ.check_agreement(pred, ref, (context, name))


@pytest.mark.parametrize("method", ["entropy", "max", "percentile", "mse"])
def test_every_calibrator_holds_on_a_spiky_normalised_input(spiky, method, tmp_path):
    f, data, folder = spiky
    out = tmp_path / method
    res = invoke("calibrate", f.path, "--data", folder / "calib.npy", "--eval-data", folder / "eval.npz", "--method", method,
                 "--no-fallback", "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    if method == "entropy":  # the default: tighter
        check_held_out(f, data, out, DEFAULT_LOST, DEFAULT_DIFFER, method)
    else:
        check_held_out(f, data, out, ANY_LOST, ANY_DIFFER, method)


def test_the_default_tolerance_catches_the_clipping_it_guards_against(spiky, monkeypatch, tmp_path):
    """TensorRT's own EntropyCalibration2 threshold, without the floor at the 99.99th percentile,
    clips the spiky stem: the tolerance above must fail it, or it guards nothing."""
    f, data, folder = spiky
    monkeypatch.setitem(calibrators.CALIBRATORS, "entropy", lambda s, **_: calibrators.amax_kl(s))
    out = tmp_path / "unfloored"
    res = invoke("calibrate", f.path, "--data", folder / "calib.npy", "--method", "entropy", "--no-fallback", "-o", out)
    assert res.exit_code == 0, res.stderr
    with pytest.raises(AssertionError, match="allowed"):
        check_held_out(f, data, out, DEFAULT_LOST, DEFAULT_DIFFER, "unfloored entropy")


def test_every_calibrator_holds_on_raw_pixel_input(raw255, tmp_path):
    f, data, folder = raw255
    assert data["calib"].max() > 200  # really 0-255
    for method in ("entropy", "max", "percentile", "mse"):
        out = tmp_path / method
        res = invoke("calibrate", f.path, "--data", folder / "calib.npy", "--method", method, "--no-fallback", "-o", out, "--json")
        assert res.exit_code == 0, res.stderr
        check_held_out(f, data, out, ANY_LOST, ANY_DIFFER, method)


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


# The planted scale (one amax 100x too small) ruins far more than 2% of the predictions; the safety
# net's bar is 98% agreement on its held-out images, so what it keeps is judged by the same 2%.
PLANTED_LOST = Tolerance(5, HELD_OUT, "1% of top-1, the old 1-point bound, rounded down to whole images")
PLANTED_DIFFER = Tolerance(10, HELD_OUT, "2% of the predictions, below the safety net's 98% agreement bar")


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
    # The planted scale changes far more than the 11 of 540 predictions (2%) allowed below: the safety
    # net saw it. What was written instead holds within the same 2% (the net's own bar is 98%).
    assert first["most_clipped"]["tensor"] == planted and first["top1_agreement"] < PLANTED_DIFFER.min_agreement
    pred, ref = held_out(f, data, out)["qdq"]
    PLANTED_LOST.check_drop(pred, ref, data["eval_y"], "after the safety net")
    PLANTED_DIFFER.check_agreement(pred, ref, "after the safety net")


def test_no_fallback_keeps_the_bad_scales(spiky, planted, tmp_path):
    f, data, folder = spiky
    out = tmp_path / "o"
    res = invoke("calibrate", f.path, "--data", folder / "calib.npy", "--eval-data", folder / "eval.npz", "--no-fallback", "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    assert not json.loads(res.stdout)["safety_net"]["checked"]
    pred, ref = held_out(f, data, out)["qdq"]
    with pytest.raises(AssertionError, match="allowed"):  # the bad scales were written as they are
        PLANTED_DIFFER.check_agreement(pred, ref)


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


@pytest.mark.parametrize("images, lost, differ, ok", [
    (20, 1, 1, True), (20, 2, 1, False), (20, 1, 2, False), (50, 1, 1, True), (50, 1, 2, False),
    (540, 5, 10, True), (540, 6, 10, False), (540, 5, 11, False),
])
def test_the_safety_nets_bars_are_never_finer_than_one_judged_image(images, lost, differ, ok):
    """A 1-point / 98% bar is 0.2 / 0.4 of an image on 20 images: one borderline flip on another
    CPU would trip it. The bars widen to one image there, and stay as configured on larger sets."""
    from rescompile.config import CalibConfig
    from rescompile.stages.calibrate.accuracy import Agreement
    from rescompile.stages.calibrate.safety import holds

    fp32 = Agreement(top1=0.9, top1_agreement=1.0, cosine=1.0, images=images)
    int8 = Agreement(top1=0.9 - lost / images, top1_agreement=1.0 - differ / images, cosine=0.999, images=images)
    assert holds(int8, fp32, CalibConfig()) is ok
