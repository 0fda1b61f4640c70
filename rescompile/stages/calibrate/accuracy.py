"""FP32 vs INT8 accuracy: top-1, top-1 agreement and logit cosine similarity.

Elementwise tolerances give false alarms for INT8; these three are what matters for a
classifier. The TensorRT Q/DQ model is run by ONNX Runtime with graph optimizations off, so
Q/DQ nodes keep their reference (fake-quant) semantics, which is what TensorRT computes;
with optimizations on, ONNX Runtime's own int8 kernels on AVX2 CPUs saturate 16-bit
intermediates and would report a drop that TensorRT does not have.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from rescompile._lazy import has_module, import_optional
from rescompile._ort import cpu_session
from rescompile.data.images import ImageSet, iter_batches
from rescompile.data.preprocess import Preprocessing
from rescompile.errors import DataError


@dataclass(frozen=True)
class Agreement:
    top1: float | None  # accuracy on labels (None for unlabelled images)
    top1_agreement: float  # fraction whose argmax equals FP32's
    cosine: float  # mean cosine similarity of logits with FP32's
    images: int

    def to_dict(self) -> dict:
        return asdict(self)


def session(model: onnx.ModelProto, *, reference: bool, threads: int | None = None):
    ort = import_optional("onnxruntime")

    so = ort.SessionOptions()
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL if reference else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return cpu_session(model.SerializeToString(), so, "the model")


def logits_of(sess, images: ImageSet, prep: Preprocessing, batch_size: int = 64) -> np.ndarray:
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: x})[0] for x, _ in iter_batches(images, prep, batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def compare(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> Agreement:
    pred, ref_pred = logits.argmax(1), reference.argmax(1)
    num = (logits * reference).sum(1)
    den = np.linalg.norm(logits, axis=1) * np.linalg.norm(reference, axis=1)
    cosine = float(np.mean(num / np.maximum(den, 1e-12)))
    top1 = None if labels is None else float((pred == labels).mean())
    return Agreement(top1, float((pred == ref_pred).mean()), cosine, len(logits))


# Preprocessed evaluation batches are kept in memory up to this size (else re-read each time).
KEEP_BATCHES_BYTES = 256 << 20


class Evaluator:
    """Logits of FP32 computed once; any candidate model compared against them."""

    def __init__(self, fp32: onnx.ModelProto, images: ImageSet, prep: Preprocessing, batch_size: int = 64) -> None:
        if not len(images):
            raise DataError("no evaluation images", "Pass --eval-data with labelled images")
        self.images, self.prep, self.batch_size = images, prep, batch_size
        self.labels = None if images.labels is None else np.asarray(images.labels)
        size = prep.input_size
        keep = len(images) * 3 * size * size * 4 <= KEEP_BATCHES_BYTES
        self._kept = [x for x, _ in iter_batches(images, prep, batch_size)] if keep else None
        self.fp32_logits = self._logits(session(fp32, reference=False))
        self.fp32 = compare(self.fp32_logits, self.fp32_logits, self.labels)

    def _logits(self, sess) -> np.ndarray:
        if self._kept is None:
            return logits_of(sess, self.images, self.prep, self.batch_size)
        name = sess.get_inputs()[0].name
        return np.concatenate([sess.run(None, {name: x})[0] for x in self._kept])

    def __call__(self, model: onnx.ModelProto, *, reference: bool = True) -> Agreement:
        return compare(self._logits(session(model, reference=reference)), self.fp32_logits, self.labels)

    def pixels(self, model: onnx.ModelProto) -> Agreement | None:
        """A pixel-input artifact (uint8 pixels in) as deployed, on the same images; None when the
        evaluation data are model-ready tensors rather than images."""
        sess = session(model, reference=False)
        name = sess.get_inputs()[0].name
        try:
            outs = [sess.run(None, {name: x})[0] for x, _ in iter_batches(self.images, self.prep, self.batch_size, pixels=True)]
        except DataError:
            return None
        return compare(np.concatenate(outs), self.fp32_logits, self.labels)


    def openvino(self, model: onnx.ModelProto) -> Agreement | None:
        """``model`` as OpenVINO's CPU plugin runs it, on the same images; None when OpenVINO is not installed."""
        if not has_module("openvino"):
            return None
        import tempfile

        from rescompile.runtime.openvino import compile_onnx

        with tempfile.TemporaryDirectory(prefix="rescompile-ov-") as tmp:
            path = Path(tmp) / "model.onnx"
            onnx.save(model, str(path))
            compiled = compile_onnx(path, cache_dir=False)  # the runtime's settings; no cache for a file about to go
        request = compiled.create_infer_request()
        batches = self._kept if self._kept is not None else (x for x, _ in iter_batches(self.images, self.prep, self.batch_size))
        outs = [np.array(request.infer({0: x})[0], copy=True) for x in batches]
        return compare(np.concatenate(outs), self.fp32_logits, self.labels)


def drop_points(fp32: Agreement, other: Agreement) -> float | None:
    """Top-1 drop in percentage points (positive = INT8 is worse)."""
    if fp32.top1 is None or other.top1 is None:
        return None
    return round(100.0 * (fp32.top1 - other.top1), 4)


ScoreFn = Callable[[onnx.ModelProto], Agreement]
