"""ModelSpec: everything downstream needs to know about a model, stored in every artifact."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rescompile.data.preprocess import Preprocessing
from rescompile.errors import ModelError

SPEC_VERSION = 1
ONNX_METADATA_KEY = "rescompile.spec"


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    num_classes: int
    preprocessing: Preprocessing
    labels: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)  # architecture options, e.g. small_input
    dataset: str | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.preprocessing.shape

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    def label(self, index: int) -> str:
        return self.labels[index] if index < len(self.labels) else str(index)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec_version": SPEC_VERSION,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "preprocessing": self.preprocessing.to_dict(),
            "labels": list(self.labels),
            "options": dict(self.options),
            "dataset": self.dataset,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        try:
            return cls(
                arch=str(d["arch"]),
                num_classes=int(d["num_classes"]),
                preprocessing=Preprocessing.from_dict(d["preprocessing"]),
                labels=tuple(str(x) for x in d.get("labels") or ()),
                options=dict(d.get("options") or {}),
                dataset=d.get("dataset"),
            )
        except (KeyError, TypeError, ValueError, OverflowError, RecursionError, AttributeError) as exc:
            raise ModelError(f"malformed model spec ({exc.__class__.__name__}: {exc})", "Re-export the model") from exc
