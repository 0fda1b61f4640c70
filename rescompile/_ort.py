"""ONNX Runtime sessions whose failures are one-line ModelErrors, not ONNX Runtime tracebacks.

ONNX Runtime raises its own exception types (Fail, InvalidGraph, InvalidArgument, ...) for a
graph it cannot load or run; on a file from elsewhere that means a damaged or unsupported model.
"""

from __future__ import annotations

from typing import Any

from rescompile._lazy import import_optional
from rescompile.errors import ModelError


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else exc.__class__.__name__)[:240]


def cpu_session(model: bytes | str, options: Any = None, what: str = "the model") -> Any:
    """An ONNX Runtime CPU session for a serialized model (or a path)."""
    ort = import_optional("onnxruntime")
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001  ONNX Runtime's own exception types, all "cannot load this graph"
        raise ModelError(f"ONNX Runtime cannot load {what}: {_first_line(exc)}",
                         "The file is damaged or uses operators ONNX Runtime lacks: re-export it") from exc


def run(session: Any, outputs: list[str] | None, feed: dict[str, Any], what: str = "the model") -> list[Any]:
    try:
        return session.run(outputs, feed)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"ONNX Runtime cannot run {what}: {_first_line(exc)}",
                         "The file is damaged, or its weights do not fit its graph: re-export it") from exc
