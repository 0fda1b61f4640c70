"""onnx_from_torch: PyTorch module -> ONNX (dynamic batch, simplified, checked against PyTorch)."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rescompile._io import atomic_path
from rescompile._lazy import import_optional
from rescompile.config import ExportConfig
from rescompile.errors import ConfigError, ExportError
from rescompile.models.spec import ONNX_METADATA_KEY, ModelSpec

log = logging.getLogger(__name__)

CHECK_METADATA_KEY = "rescompile.export_check"
MIN_OPSET = 17  # Q/DQ per-channel and the ops our passes expect; TensorRT 10 parses up to 20+


@dataclass(frozen=True)
class ExportCheck:
    """ONNX Runtime vs PyTorch on the same random inputs."""

    batch_sizes: tuple[int, ...]
    max_abs_diff: float
    max_abs_logit: float
    top1_agreement: float  # fraction of images whose argmax agrees
    tolerance: float
    passed: bool


@dataclass(frozen=True)
class ExportResult:
    path: Path
    opset: int
    simplified: bool
    simplify_note: str  # what simplification did, or why it was skipped
    nodes: int
    check: ExportCheck | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def onnx_from_torch(module, spec: ModelSpec, output: str | Path, config: ExportConfig = ExportConfig()) -> ExportResult:
    """Export ``module`` (eval mode) to ``output``; the file appears only if every step succeeds."""
    import onnx
    torch = import_optional("torch")

    if config.opset < MIN_OPSET:
        raise ConfigError(f"opset {config.opset} is too old", f"Use --opset {MIN_OPSET} or newer")
    output = Path(output)
    module = module.eval().cpu()
    dummy = torch.zeros(1, *spec.input_shape)
    dynamic = {config.input_name: {0: "batch"}, config.output_name: {0: "batch"}} if config.dynamic_batch else None
    with atomic_path(output) as tmp:
        with warnings.catch_warnings():
            # The TorchScript-based exporter is deprecated in favour of torch.export, but it
            # is the one that handles TorchScript inputs and yields the plain Conv/Add/Relu
            # graphs the optimizer and TensorRT expect.
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    module,
                    (dummy,),
                    str(tmp),
                    dynamo=False,
                    opset_version=config.opset,
                    input_names=[config.input_name],
                    output_names=[config.output_name],
                    dynamic_axes=dynamic,
                    do_constant_folding=True,
                )
            except Exception as exc:  # the exporter raises many types for unsupported models
                raise ExportError(
                    f"torch.onnx.export failed: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}",
                    "Check that the model runs on a 1x3xHxW float input",
                ) from exc
        model = onnx.load(str(tmp))
        model, simplified, note = _simplify(model, spec)
        _set_metadata(model, ONNX_METADATA_KEY, json.dumps(spec.to_dict()))
        model.producer_name = "rescompile"
        onnx.checker.check_model(model)
        check = None
        if config.check:
            check = check_against_torch(module, model, spec, config)
            _set_metadata(model, CHECK_METADATA_KEY, json.dumps(asdict(check)))
        onnx.save(model, str(tmp))
        if check is not None and not check.passed:
            raise ExportError(
                f"ONNX Runtime output differs from PyTorch by {check.max_abs_diff:.3g} (tolerance {check.tolerance:.3g}, "
                f"top-1 agreement {check.top1_agreement:.1%})",
                "The model uses an op the exporter mistranslates; try another --opset",
            )
    nodes = len(model.graph.node)
    log.info("exported %s: %d nodes, opset %d, %s", output, nodes, config.opset, note)
    return ExportResult(output, config.opset, simplified, note, nodes, check)


def _set_metadata(model, key: str, value: str) -> None:
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value


def _simplify(model, spec: ModelSpec):
    """onnxsim when available; otherwise shape inference only, and say so."""
    import onnx

    try:
        import onnxsim
    except ImportError:
        note = "onnxsim not installed: skipped simplification (shape inference only); pip install onnxsim"
        log.warning(note)
        return onnx.shape_inference.infer_shapes(model), False, note
    before = len(model.graph.node)
    try:
        simplified, ok = onnxsim.simplify(model, test_input_shapes={model.graph.input[0].name: [1, *spec.input_shape]})
    except Exception as exc:  # onnxsim raises RuntimeError/ValueError/its own types
        note = f"onnxsim failed ({exc.__class__.__name__}): kept the unsimplified graph"
        log.warning(note)
        return onnx.shape_inference.infer_shapes(model), False, note
    if not ok:
        note = "onnxsim's own check failed: kept the unsimplified graph"
        log.warning(note)
        return onnx.shape_inference.infer_shapes(model), False, note
    return simplified, True, f"onnxsim: {before} -> {len(simplified.graph.node)} nodes"


def check_against_torch(module, model, spec: ModelSpec, config: ExportConfig) -> ExportCheck:
    """Run the same random N(0, 1) batches through PyTorch and ONNX Runtime (CPU)."""
    ort = import_optional("onnxruntime")
    torch = import_optional("torch")

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    max_diff, max_ref, agree, total = 0.0, 0.0, 0, 0
    for batch in config.check_batch_sizes:
        x = rng.standard_normal((batch, *spec.input_shape)).astype(np.float32)
        with torch.inference_mode():
            ref = module(torch.from_numpy(x)).float().numpy()
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        if got.shape != ref.shape:
            raise ExportError(f"ONNX output shape {got.shape} != PyTorch {ref.shape} at batch {batch}", "Report this model")
        max_diff = max(max_diff, float(np.abs(got - ref).max()))
        max_ref = max(max_ref, float(np.abs(ref).max()))
        agree += int((got.argmax(1) == ref.argmax(1)).sum())
        total += batch
    tol = config.check_atol + config.check_rtol * max_ref
    return ExportCheck(tuple(config.check_batch_sizes), max_diff, max_ref, agree / total, tol, max_diff <= tol)
