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
        if "Type Error" in str(exc):  # a well-formed graph in a type the CPU kernels lack (bfloat16 Conv)
            raise ModelError(f"ONNX Runtime cannot load {what}: {_first_line(exc)}",
                             "ONNX Runtime's CPU kernels do not take that data type: convert the model to float32 "
                             "(rescompile's intake does so for every stage)") from exc
        raise ModelError(f"ONNX Runtime cannot load {what}: {_first_line(exc)}",
                         "The file is damaged or uses operators ONNX Runtime lacks: re-export it") from exc


# numpy dtype names as ONNX Runtime spells tensor types
_ORT_TYPE = {"float32": "float", "float64": "double"}


def _type_mismatch(session: Any, feed: dict[str, Any]) -> str | None:
    """"input 'x' takes tensor(float16), not tensor(float)" when a feed's dtype is not the declared one."""
    for i in session.get_inputs():
        value = feed.get(i.name)
        dtype = getattr(value, "dtype", None)
        if dtype is not None and f"tensor({_ORT_TYPE.get(dtype.name, dtype.name)})" != i.type:
            return f"input {i.name!r} takes {i.type}, not tensor({_ORT_TYPE.get(dtype.name, dtype.name)})"
    return None


def run(session: Any, outputs: list[str] | None, feed: dict[str, Any], what: str = "the model") -> list[Any]:
    try:
        return session.run(outputs, feed)
    except Exception as exc:  # noqa: BLE001
        mismatch = _type_mismatch(session, feed)  # asked only after a failure: the run itself pays nothing
        if mismatch is not None:  # the file is fine: it was fed another type than it declares
            raise ModelError(f"ONNX Runtime cannot run {what}: its {mismatch}",
                             "Feed it the type its input declares (numpy .astype)") from exc
        raise ModelError(f"ONNX Runtime cannot run {what}: {_first_line(exc)}",
                         "The file is damaged, or its weights do not fit its graph: re-export it") from exc
