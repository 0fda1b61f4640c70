"""ONNX Runtime runner: the CPU path (FP32 or the INT8 CPU artifact), CUDA when asked for."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rescompile._io import loads_json
from rescompile._lazy import import_optional
from rescompile.errors import ConfigError, ModelError, RescompileError
from rescompile.models.spec import ONNX_METADATA_KEY, ModelSpec
from rescompile.runtime.base import Runner, RunnerError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        *,
        spec: ModelSpec | None = None,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        ort = import_optional("onnxruntime")

        path = Path(path)
        if not path.is_file():
            raise ModelError(f"no ONNX file at {path}", "Pass the path of a .onnx model")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: ORT's warnings would go to stderr, bypassing logging
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise ConfigError(f"threads must be a positive integer, got {threads!r}", "Pass threads=1 or more, or None")
            opts.intra_op_num_threads = threads
        chosen = choose_providers(providers, ort.get_available_providers())
        try:
            session = ort.InferenceSession(str(path), opts, providers=chosen)
        except Exception as exc:  # ORT raises its own pybind exception types (InvalidProtobuf, Fail, ...)
            raise ModelError(
                f"ONNX Runtime cannot load {path} ({exc.__class__.__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})",
                "Check that it is a complete ONNX model; re-export or rebuild it",
            ) from exc
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise ModelError(
                f"{path} has {len(inputs)} inputs and {len(outputs)} outputs",
                "The runtime takes classifiers with one image input and a logits output",
            )
        dims = inputs[0].shape
        if len(dims) != 4:
            raise ModelError(f"{path} takes a rank-{len(dims)} input, not an NCHW batch", "Export the model with an N x C x H x W input")
        if spec is None:
            spec = spec_from_metadata(session, path)
        self._session = session
        self.providers = tuple(session.get_providers())
        super().__init__(
            spec=spec,
            source=path,
            input_name=inputs[0].name,
            output_name=outputs[0].name,
            input_shape=tuple(d if isinstance(d, int) and d > 0 else None for d in dims[1:]),
        )
        log.debug("ONNX Runtime session for %s on %s", path, ", ".join(self.providers))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        try:
            return self._session.run([self.output_name], {self.input_name: batch})[0]
        except Exception as exc:  # shape errors inside the graph surface as ORT's own types
            raise RunnerError(
                f"ONNX Runtime failed on a batch of shape {batch.shape} ({exc.__class__.__name__}: {str(exc)[:160]})",
                "Check the batch against the model's input shape",
            ) from exc

    def _release(self) -> None:
        self._session = None


def choose_providers(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """CPU by default; requested providers that this ONNX Runtime has, CPU always last as fallback."""
    if requested is None:
        return [CPU]
    if isinstance(requested, str):
        requested = [requested]
    chosen = []
    for name in requested:
        if name in available:
            if name not in chosen:
                chosen.append(name)
        else:
            log.warning("%s is not available in this onnxruntime (has: %s): falling back", name, ", ".join(available))
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


def spec_from_metadata(session, path: Path) -> ModelSpec | None:
    """The ModelSpec that `rescompile export` stores in the model metadata, or None."""
    meta = session.get_modelmeta().custom_metadata_map
    text = meta.get(ONNX_METADATA_KEY)
    if not text:
        log.info("%s carries no rescompile spec: infer() works, classify() needs a spec", path)
        return None
    try:
        return ModelSpec.from_dict(loads_json(text))
    except (ValueError, RecursionError, RescompileError) as exc:
        raise ModelError(f"{path} has a corrupt {ONNX_METADATA_KEY} metadata entry ({exc})", "Re-export it") from exc
