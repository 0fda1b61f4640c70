"""The embedded default model: shipped in the package, sha256-checked, and what `build` uses."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from rescompile.errors import ModelError
from rescompile.models import default
from rescompile.models.checkpoint import plain
from rescompile.pipeline import DEFAULT_TRAIN, default_model


def test_the_embedded_model_matches_its_record_and_recipe():
    embedded = default.embedded_default()
    record = embedded.record
    assert record["sha256"] == embedded.sha256 and record["bytes"] == embedded.path.stat().st_size
    assert embedded.path.stat().st_size < 2 * 2**20  # small enough to ship in the wheel
    # The recorded recipe is the one `build --retrain` trains with (threads aside: a machine setting;
    # options added since the record was made must still be at values that do not change training).
    expected = plain(replace(DEFAULT_TRAIN, output_dir=None))
    assert set(expected) - set(record["recipe"]) == set() and set(expected["data"]) - set(record["recipe"]["data"]) <= {"data_format"}
    for key, value in record["recipe"].items():
        if key == "data":
            assert value == {k: v for k, v in expected["data"].items() if k in value}
        elif key != "num_threads":
            assert value == expected[key], key
    assert record["seed"] == DEFAULT_TRAIN.seed
    assert record["test_top1"] >= 0.97  # floor: the shipped record (fixed numbers), not re-measured here


def test_build_loads_the_embedded_weights_with_their_metrics():
    model = default_model()
    assert model.spec.arch == "resnet20" and model.spec.num_classes == 10 and model.spec.dataset == "digits"
    assert model.metrics["test_acc"] == pytest.approx(default.embedded_default().record["test_top1"], abs=1e-6)


@pytest.fixture
def embedded_copy(tmp_path, monkeypatch):
    weights, record = tmp_path / default.WEIGHTS.name, tmp_path / default.RECORD.name
    shutil.copyfile(default.WEIGHTS, weights)
    shutil.copyfile(default.RECORD, record)
    monkeypatch.setattr(default, "WEIGHTS", weights)
    monkeypatch.setattr(default, "RECORD", record)
    return weights, record


def test_a_damaged_embedded_model_is_refused(embedded_copy):
    weights, _ = embedded_copy
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the weights
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match its recorded sha256"):
        default_model()


def test_a_missing_or_unreadable_record_is_refused(embedded_copy):
    weights, record = embedded_copy
    record.write_text(json.dumps({"file": weights.name}))
    with pytest.raises(ModelError, match="unreadable"):
        default.embedded_default()
    record.unlink()
    with pytest.raises(ModelError, match="missing from this installation"):
        default.embedded_default()
