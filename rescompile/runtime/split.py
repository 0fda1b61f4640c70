"""One runner over two CPU engines, split by batch size, as the build measured them.

Where the build measured ONNX Runtime fastest at the small batches and OpenVINO at the large ones
(manifest ``cpu_artifact.choice.split_at``), ``rescompile.runtime.load`` returns this runner: a
call with fewer than ``split_at`` images (and so ``classify``) runs ONNX Runtime on the CPU
artifact (with its pixel-input twin), a larger one runs OpenVINO on the OpenVINO form. The
OpenVINO model is compiled on the first large batch, so an app that only classifies single
frames never pays for it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from rescompile.runtime.base import Runner, RunnerError


class BatchSplitRunner(Runner):
    """``small`` for batches below ``split_at``, ``make_large()`` (made on first use) from it."""

    def __init__(self, small: Runner, make_large: Callable[[], Runner], split_at: int, large_backend: str = "openvino") -> None:
        super().__init__(spec=small.spec, source=small.source, input_name=small.input_name, output_name=small.output_name,
                         input_shape=small.input_shape)
        if split_at < 2:
            raise ValueError(f"split_at must be 2 or more, got {split_at}")
        self.small, self.split_at = small, int(split_at)
        self.large_backend = large_backend
        self._make_large = make_large
        self._large: Runner | None = None
        self.backend = f"{small.backend} below batch {self.split_at}, {large_backend} from it"
        self.pixels_source = getattr(small, "pixels_source", None)

    @property
    def takes_pixels(self) -> bool:
        """Whether classify (one image: the small engine) runs a pixel-input artifact."""
        return bool(getattr(self.small, "takes_pixels", False))

    @property
    def load_seconds(self) -> float:
        return sum(float(getattr(r, "load_seconds", 0.0)) for r in (self.small, self._large) if r is not None)

    def engine_for(self, n: int) -> str:
        """The engine a call with ``n`` images runs on."""
        return self.small.backend if n < self.split_at else self.large_backend

    def runner_for(self, n: int) -> Runner:
        if n < self.split_at:
            return self.small
        if self._large is None:
            if self.closed:
                raise RunnerError(f"{self.backend} runner for {self.source} is closed", "Load the model again")
            self._large = self._make_large()
        return self._large

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.runner_for(batch.shape[0]).infer(batch)

    def _run_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.runner_for(pixels.shape[0]).infer_pixels(pixels)

    def _release(self) -> None:
        self.small.close()
        if self._large is not None:
            self._large.close()
