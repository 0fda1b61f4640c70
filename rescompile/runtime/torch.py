"""PyTorch runner: the FP32 reference (eager mode), for checkpoints, TorchScript and architecture names.

PyTorch is imported only when this runner is created, never by ``import rescompile.runtime``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from rescompile._lazy import import_optional
from rescompile.errors import ConfigError, ModelError
from rescompile.runtime.base import Runner, RunnerError

log = logging.getLogger(__name__)


class TorchRunner(Runner):
    backend = "torch"

    def __init__(self, source: Any, *, device: str | None = None, threads: int | None = None) -> None:
        """``source``: a name, checkpoint or TorchScript path, or a LoadedModel from load_model."""
        torch = import_optional("torch")

        from rescompile.models.load import LoadedModel, load_model

        model = source if isinstance(source, LoadedModel) else load_model(source)
        if model.module is None:
            raise ModelError(
                f"{model.source} is an ONNX model, which the PyTorch runner cannot run",
                'Run it with backend="onnxruntime"',
            )
        device = device or "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but CUDA is not available to PyTorch here", 'Use device="cpu"')
        try:
            self._device = torch.device(device)
        except RuntimeError as exc:
            raise ConfigError(f"unknown torch device {device!r}", 'Use "cpu", "cuda" or "cuda:N"') from exc
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise ConfigError(f"threads must be a positive integer, got {threads!r}", "Pass threads=1 or more, or None")
            torch.set_num_threads(threads)  # process-wide in PyTorch: say so in the log
            log.info("torch.set_num_threads(%d) (applies to the whole process)", threads)
        self._torch = torch
        self._module = model.module.eval().to(self._device)
        self.model = model
        source_name = model.source if model.kind == "name" else Path(model.source)
        super().__init__(spec=model.spec, source=source_name, input_name="input", output_name="logits")

    @property
    def device(self) -> str:
        return str(self._device)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            out = self._module(torch.from_numpy(batch).to(self._device))
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            raise RunnerError(f"{self.source} did not return (N, classes) logits", "The runtime takes image classifiers")
        return out.float().cpu().numpy()

    def _release(self) -> None:
        self._module = None
        self.model = None
