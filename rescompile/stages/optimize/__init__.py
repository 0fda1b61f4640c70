"""optimize_onnx: FP32 ONNX -> the form TensorRT fuses best, with a report of what was found and done.

Each pass is ``function(Graph) -> number of rewrites``; the passes run in order until none
rewrites anything (so a second run of the whole stage reports 0 rewrites).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from rescompile._io import atomic_path
from rescompile._lazy import import_optional
from rescompile._ort import cpu_session, run
from rescompile.errors import ModelError, OptimizeError
from rescompile.models.intake import IntakeReport, normalize_onnx
from rescompile.stages.optimize.batchnorm import (
    batchnorm_inference_mode,
    batchnorm_to_affine,
    fold_affine_into_conv,
    fold_batchnorm,
    fold_batchnorm_forward,
)
from rescompile.stages.optimize.graph import Graph
from rescompile.stages.optimize.noops import remove_noops
from rescompile.stages.optimize.residual import FusionReport, count_ops, find_residual_blocks

log = logging.getLogger(__name__)

PASSES: dict[str, Callable[[Graph], int]] = {
    "batchnorm_inference_mode": batchnorm_inference_mode,
    "remove_noops": remove_noops,
    "fold_batchnorm": fold_batchnorm,
    "fold_affine_into_conv": fold_affine_into_conv,
    "fold_batchnorm_forward": fold_batchnorm_forward,
    "batchnorm_to_affine": batchnorm_to_affine,
}
_MAX_ROUNDS = 5


@dataclass(frozen=True)
class EquivalenceCheck:
    max_abs_diff: float
    max_abs_output: float
    tolerance: float
    passed: bool


@dataclass
class OptimizeResult:
    path: Path
    report: FusionReport
    check: EquivalenceCheck | None
    simplify_note: str
    intake: IntakeReport | None = None

    @property
    def rewrites(self) -> int:
        return sum(self.report.rewrites.values())


def check_weights_constant(g: Graph, path: Path | str) -> None:
    """Conv/Gemm weights must be constants: TensorRT builds and INT8 quantizes them once."""
    for node in g.g.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 1 and g.depends_on_input(node.input[1]):
            raise ModelError(
                f"{path}: {node.op_type} {node.name or node.output[0]!r} takes its weights from "
                f"{node.input[1]!r}, which is computed at run time",
                "Re-export with the weights stored as initializers (torch.onnx.export(..., export_params=True))",
            )


def optimize_model(model: onnx.ModelProto, source: Path | str = "model") -> tuple[onnx.ModelProto, FusionReport]:
    """Run every pass to a fixpoint on a copy of ``model``; return it with its fusion report."""
    from rescompile.models.onnx_model import check_classifier

    check_classifier(model, source)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    g = Graph(work)
    check_weights_constant(g, source)
    bn_before, nodes_before = count_ops(g, "BatchNormalization"), len(g.g.node)
    rewrites = dict.fromkeys(PASSES, 0)
    for _ in range(_MAX_ROUNDS):
        round_total = 0
        for name, fn in PASSES.items():
            n = fn(g)
            rewrites[name] += n
            round_total += n
        if not round_total:
            break
    g.cleanup()
    g.infer_shapes()
    if rewrites["batchnorm_inference_mode"]:
        log.warning(
            "%d BatchNormalization node(s) were exported in training mode: using their running statistics, "
            "as model.eval() does", rewrites["batchnorm_inference_mode"],
        )
    report = FusionReport(
        find_residual_blocks(g), bn_before, count_ops(g, "BatchNormalization"), nodes_before, len(g.g.node), rewrites
    )
    return work, report


def inspect_model(model: onnx.ModelProto, source: Path | str = "model") -> FusionReport:
    """The fusion report of ``model`` as it is (nothing rewritten)."""
    from rescompile.models.onnx_model import check_classifier

    check_classifier(model, source)
    g = Graph(model)
    g.infer_shapes()
    n_bn = count_ops(g, "BatchNormalization")
    return FusionReport(find_residual_blocks(g), n_bn, n_bn, len(g.g.node), len(g.g.node), {})


def _simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Constant folding and shape inference through onnxsim; plain shape inference without it."""
    try:
        import onnxsim
    except ImportError:
        return onnx.shape_inference.infer_shapes(model), "onnxsim not installed: shape inference only"
    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # onnxsim raises assorted types on unusual graphs
        return onnx.shape_inference.infer_shapes(model), f"onnxsim failed ({exc.__class__.__name__}): shape inference only"
    if not ok:
        return onnx.shape_inference.infer_shapes(model), "onnxsim's own check failed: shape inference only"
    return simplified, "onnxsim: constants folded, shapes inferred"


def _probe_input(model: onnx.ModelProto) -> np.ndarray:
    """A random input of the (normalised) model's declared shape: batch 1 where dynamic, and for
    other dynamic dims what an image classifier takes (3 channels, 224 pixels)."""
    from rescompile.models.intake import input_layout
    from rescompile.models.onnx_model import graph_inputs

    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in graph_inputs(model)[0].type.tensor_type.shape.dim]
    fallback = [1, 224, 224, 3] if input_layout(model) == "nhwc" else [1, 3, 224, 224]
    shape = [d or fallback[i] for i, d in enumerate(dims)]
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def run_reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime on CPU with graph optimizations off: the graph exactly as written."""
    ort = import_optional("onnxruntime")

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    session = cpu_session(model.SerializeToString(), so, "the model")
    return run(session, None, {session.get_inputs()[0].name: x}, "the model")[0]


def check_equivalent(
    before: onnx.ModelProto, after: onnx.ModelProto, atol: float = 1e-4, rtol: float = 1e-3, fallback: onnx.ModelProto | None = None,
) -> EquivalenceCheck:
    """Outputs of ``before`` and ``after`` on one random input (ONNX Runtime, optimizations off).
    ``fallback`` is the reference when ONNX Runtime cannot run ``before`` as it is (e.g. a source
    file in a form only intake made runnable)."""
    x = _probe_input(after)
    try:
        ref = run_reference(before, x)
    except ModelError as exc:
        if fallback is None:
            raise
        log.info("ONNX Runtime cannot run the source as it is (%s): checking against its normalised form", exc.__class__.__name__)
        ref = run_reference(fallback, x)
    got = run_reference(after, x)
    diff, scale = float(np.abs(ref - got).max()), float(np.abs(ref).max())
    tol = atol + rtol * scale
    return EquivalenceCheck(diff, scale, tol, diff <= tol)


def optimize_onnx(source: str | Path, output: str | Path, *, check: bool = True, simplify: bool = True) -> OptimizeResult:
    """Optimize the ONNX file ``source`` into ``output`` (``source`` is never modified)."""
    from rescompile.models.onnx_model import load_onnx

    source, output = Path(source), Path(output)
    if not source.exists():
        raise ModelError(f"no such ONNX file: {source}", "Check the path")
    original = load_onnx(source)
    model, intake = normalize_onnx(original, source)
    optimized, report = optimize_model(model, source)
    report.intake = list(intake.notes)
    # The reference for the check is the file as given (BN on running statistics, as in
    # batchnorm_inference_mode), so intake's rewrites are checked along with the passes.
    baseline, normalised = original, model
    if report.rewrites.get("batchnorm_inference_mode"):
        baseline, normalised = onnx.ModelProto(), onnx.ModelProto()
        baseline.CopyFrom(original)
        normalised.CopyFrom(model)
        batchnorm_inference_mode(Graph(baseline))
        batchnorm_inference_mode(Graph(normalised))
    note = "skipped"
    if simplify:
        optimized, note = _simplify(optimized)
        report.nodes_after = len(optimized.graph.node)
    result_check = check_equivalent(baseline, optimized, fallback=normalised) if check else None
    if result_check is not None and not result_check.passed:
        raise OptimizeError(
            f"optimized model differs from the original by {result_check.max_abs_diff:.3g} "
            f"(tolerance {result_check.tolerance:.3g}); nothing was written",
            "Report this model; use it unoptimized meanwhile",
        )
    with atomic_path(output) as tmp:
        onnx.save(optimized, str(tmp))
    log.info("optimized %s -> %s: %s", source, output, report.rewrites)
    return OptimizeResult(output, report, result_check, note, intake)


def inspect_onnx(source: str | Path) -> FusionReport:
    from rescompile.models.onnx_model import load_onnx

    source = Path(source)
    if not source.exists():
        raise ModelError(f"no such ONNX file: {source}", "Check the path")
    model, intake = normalize_onnx(load_onnx(source), source)
    report = inspect_model(model, source)
    report.intake = list(intake.notes)
    return report
