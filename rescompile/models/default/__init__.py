"""The embedded default model: ResNet-20 trained on scikit-learn's digits, shipped inside the package.

``python benchmarks/train_digits.py --write-default`` trains it with the recipe and seed recorded in
``resnet20-digits.json`` beside the weights, and writes both. The record's sha256 is checked every
time the weights are loaded, so a damaged or swapped file is refused instead of quietly compiled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rescompile._io import sha256_file
from rescompile.config import DEFAULT_ARCH, DEFAULT_DATASET
from rescompile.errors import ModelError

NAME = f"{DEFAULT_ARCH}-{DEFAULT_DATASET}"
HERE = Path(__file__).resolve().parent
WEIGHTS = HERE / f"{NAME}.pt"
RECORD = HERE / f"{NAME}.json"


@dataclass(frozen=True)
class EmbeddedModel:
    path: Path
    sha256: str
    record: dict[str, Any]


def embedded_default() -> EmbeddedModel:
    """The packaged default checkpoint, its sha256 checked against its record."""
    if not WEIGHTS.is_file() or not RECORD.is_file():
        raise ModelError(
            f"the embedded default model is missing from this installation ({WEIGHTS.name} or {RECORD.name} in {HERE})",
            "Reinstall rescompile, or train it with `rescompile build --retrain`",
        )
    try:
        record = json.loads(RECORD.read_text(encoding="utf-8"))
        expected = str(record["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"the embedded default model's record {RECORD} is unreadable ({exc.__class__.__name__})",
                         "Reinstall rescompile, or train it with `rescompile build --retrain`") from exc
    actual = sha256_file(WEIGHTS)
    if actual != expected:
        raise ModelError(
            f"the embedded default model {WEIGHTS} does not match its recorded sha256 ({actual[:12]}... != {expected[:12]}...)",
            "The installation is damaged: reinstall rescompile, or train it with `rescompile build --retrain`",
        )
    return EmbeddedModel(WEIGHTS, actual, record)


def write_record(weights: Path, record: dict[str, Any], target: Path = RECORD) -> Path:
    """The record beside freshly trained weights (benchmarks/train_digits.py --write-default)."""
    from rescompile._io import write_json_atomic

    return write_json_atomic(target, {**record, "file": weights.name, "sha256": sha256_file(weights), "bytes": weights.stat().st_size})
