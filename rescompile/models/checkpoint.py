"""Checkpoint files: a state dict plus the ModelSpec, loadable with ``weights_only=True``."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Any

from rescompile._io import atomic_path
from rescompile._lazy import import_optional
from rescompile.models.spec import ModelSpec

CHECKPOINT_FORMAT = "rescompile.checkpoint"
CHECKPOINT_VERSION = 1


def plain(obj: Any) -> Any:
    """Dataclasses/enums/paths/tuples -> JSON- and weights_only-safe builtins."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def save_checkpoint(
    path: Path,
    state_dict: dict[str, Any],
    spec: ModelSpec,
    *,
    metrics: dict[str, Any] | None = None,
    train_config: Any = None,
) -> Path:
    torch = import_optional("torch")

    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "spec": spec.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "metrics": plain(metrics or {}),
        "train_config": plain(train_config) if train_config is not None else None,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def is_rescompile_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT
