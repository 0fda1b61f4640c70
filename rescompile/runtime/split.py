"""One runner over the two CPU engines, each call on the one the build measured faster at its size.

Where the build measured ONNX Runtime faster at some batch sizes and OpenVINO at others (manifest
``cpu_artifact.choice.dispatch``: from which batch size each engine runs), and both are installed,
``rescompile.runtime.load`` returns this runner. A call of ``n`` images runs on the engine measured
faster at the largest measured size not above ``n``; ``classify`` (one image) runs ``runner_for(1)``.
Each engine's model is compiled on its first call (the batch-1 engine at load), so an app that
only classifies single frames never pays for the other one.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from rescompile.runtime.base import Runner, RunnerError

ENGINES = ("onnxruntime", "openvino")


def dispatch(by_batch: dict[str, str]) -> list[list[Any]] | None:
    """[[from_batch, engine], ...]: each engine from the measured batch size at which it became the
    faster one, the first from batch 1; None when one engine was faster at every size (or the table
    is not one this build writes)."""
    try:
        order = sorted((int(b), engine) for b, engine in by_batch.items())
    except (TypeError, ValueError, AttributeError):
        return None
    if not order or any(engine not in ENGINES or b < 1 for b, engine in order):
        return None
    table: list[list[Any]] = [[1, order[0][1]]]
    for b, engine in order[1:]:
        if engine != table[-1][1]:
            table.append([b, engine])
    return table if len(table) > 1 else None


def engine_for(table: list[list[Any]], n: int) -> str:
    """The engine of ``dispatch``'s table for a call of ``n`` images: the one measured faster at the
    largest measured batch size not above ``n``."""
    return [engine for start, engine in table if start <= n][-1] if n >= table[0][0] else table[0][1]


def describe(table: list[list[Any]]) -> str:
    """'onnxruntime below batch 16, openvino from it' / '... from batch 8, ... from batch 16'."""
    if len(table) == 2:
        return f"{table[0][1]} below batch {table[1][0]}, {table[1][1]} from it"
    return ", ".join(f"{engine} from batch {start}" for start, engine in table)


class BatchSplitRunner(Runner):
    """``makers[engine]()`` opens an engine's runner; ``table`` is ``dispatch``'s [[from_batch, engine], ...]."""

    def __init__(self, makers: dict[str, Callable[[], Runner]], table: list[list[Any]]) -> None:
        if len(table) < 2 or table[0][0] != 1 or any(engine not in makers for _, engine in table):
            raise ValueError(f"not a dispatch table over {sorted(makers)}: {table}")
        self.table = [[int(start), str(engine)] for start, engine in table]
        self._makers = makers
        self._open: dict[str, Runner] = {}
        one = self.runner_for(1)
        super().__init__(spec=one.spec, source=one.source, input_name=one.input_name, output_name=one.output_name,
                         input_shape=one.input_shape)
        self.backend = describe(self.table)
        self.pixels_source = getattr(one, "pixels_source", None)

    @property
    def takes_pixels(self) -> bool:
        """Whether classify (one image) runs a pixel-input artifact."""
        return bool(getattr(self.runner_for(1), "takes_pixels", False))

    @property
    def load_seconds(self) -> float:
        """Compile time of the models opened so far (ONNX Runtime does not report it)."""
        return sum(float(getattr(r, "load_seconds", 0.0)) for r in self._open.values())

    def engine_for(self, n: int) -> str:
        """The engine a call with ``n`` images runs on."""
        return engine_for(self.table, n)

    def runner_for(self, n: int) -> Runner:
        engine = self.engine_for(n)
        runner = self._open.get(engine)
        if runner is None:
            if getattr(self, "_closed", False):
                raise RunnerError(f"{self.backend} runner for {self.source} is closed", "Load the model again")
            runner = self._open[engine] = self._makers[engine]()
        return runner

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.runner_for(batch.shape[0]).infer(batch)

    def _run_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.runner_for(pixels.shape[0]).infer_pixels(pixels)

    def _release(self) -> None:
        for runner in self._open.values():
            runner.close()
