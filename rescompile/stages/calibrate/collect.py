"""Activation statistics: run the FP32 model in ONNX Runtime with every tensor exposed.

Two streaming passes over the calibration batches, so memory is bounded by the batch size,
never by the number of images: pass 1 finds each tensor's min/max, pass 2 fills a fixed
histogram of |x| over [0, amax] (what the entropy, percentile and MSE calibrators need).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx

from rescompile._lazy import import_optional
from rescompile._ort import cpu_session
from rescompile.errors import DataError

HIST_BINS = 2048  # TensorRT's entropy calibrator histogram size (Migacz, GTC 2017)
# Below this, a tensor is treated as all-zero: any positive scale represents it exactly.
MIN_AMAX = 1e-8


@dataclass
class TensorStats:
    name: str
    min: float
    max: float
    hist: np.ndarray | None = None  # counts of |x| in HIST_BINS bins over [0, amax]

    @property
    def amax(self) -> float:
        return max(abs(self.min), abs(self.max), MIN_AMAX)

    @property
    def bin_width(self) -> float:
        return self.amax / HIST_BINS


def activation_tensors(model: onnx.ModelProto) -> list[str]:
    """Every float tensor a quantized network can carry: the image input and every node output."""
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        names.extend(o for o in node.output if o)
    return list(dict.fromkeys(names))


def _session(model: onnx.ModelProto, tensors: list[str]):
    ort = import_optional("onnxruntime")

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output} | {i.name for i in exposed.graph.input}
    for name in tensors:
        if name not in present:
            exposed.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    # Basic level only: no fusions that would change what an intermediate tensor holds.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.log_severity_level = 3
    session = cpu_session(exposed.SerializeToString(), so, "the model for calibration")
    return session, session.get_inputs()[0].name


def _run(session, input_name: str, tensors: list[str], x: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    if not np.isfinite(x).all():
        raise DataError("calibration batch contains NaN or infinite values", "Check the calibration images")
    wanted = [t for t in tensors if t != input_name]
    outs = session.run(wanted, {input_name: x})
    if input_name in tensors:
        yield input_name, x
    yield from zip(wanted, outs)


def collect_statistics(
    model: onnx.ModelProto,
    batches: Callable[[], Iterable[np.ndarray]],
    tensors: list[str] | None = None,
    *,
    histograms: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, TensorStats]:
    """Stats for ``tensors`` (default: all activations). ``batches()`` yields float32 NCHW arrays
    and is called once per pass; ``on_batch(pass_index, images_in_batch)`` reports progress."""
    tensors = tensors or activation_tensors(model)
    session, input_name = _session(model, tensors)
    stats = {t: TensorStats(t, np.inf, -np.inf) for t in tensors}
    seen = 0
    for x in batches():
        for name, value in _run(session, input_name, tensors, x):
            s = stats[name]
            s.min, s.max = min(s.min, float(value.min())), max(s.max, float(value.max()))
        seen += len(x)
        if on_batch:
            on_batch(0, len(x))
    if not seen:
        raise DataError("no calibration images", "Pass --data with at least one image")
    for s in stats.values():
        if not np.isfinite(s.min) or not np.isfinite(s.max):
            raise DataError(f"tensor {s.name!r} took non-finite values on the calibration data", "Check the model and the images")
    if histograms:
        for s in stats.values():
            s.hist = np.zeros(HIST_BINS, np.int64)
        for x in batches():
            for name, value in _run(session, input_name, tensors, x):
                s = stats[name]
                idx = np.minimum((np.abs(value).ravel() * (HIST_BINS / s.amax)).astype(np.int64), HIST_BINS - 1)
                s.hist += np.bincount(idx, minlength=HIST_BINS)
            if on_batch:
                on_batch(1, len(x))
    return stats
