"""rescompile bench: every backend a bundle can run on this machine, against FP32 PyTorch eager,
on the same inputs, in the same run."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from rescompile import nvidia
from rescompile._lazy import has_module, import_optional
from rescompile.bench.backends import Backend, OpenVINOBackend, OrtBackend, TorchBackend, TrtBackend
from rescompile.bench.env import PowerSampler, environment
from rescompile.bench.timing import TimingBudget, TimingStats, measure
from rescompile.bundle import Manifest, read_manifest
from rescompile.config import BenchConfig, DataConfig, default_bundle_dir
from rescompile.errors import ConfigError, DataError, MissingDependencyError

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]

OPENVINO_ROLE = "openvino_int8_onnx"


@dataclass
class Measurement:
    key: str
    batch: int
    stats: TimingStats | None
    skipped: str | None = None
    speedup: float | None = None  # reference p50 / this p50, same batch
    energy_j_per_image: float | None = None

    def to_dict(self, keep_samples: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {"backend": self.key, "batch": self.batch, "skipped": self.skipped, "speedup": self.speedup}
        if self.stats is not None:
            d.update(self.stats.to_dict(keep_samples))
        if self.energy_j_per_image is not None:
            d["energy_j_per_image"] = self.energy_j_per_image
        return d


@dataclass
class Accuracy:
    key: str
    top1: float | None
    agreement: float
    cosine: float
    images: int


@dataclass
class BenchReport:
    bundle: Path
    model: str
    environment: dict[str, Any]
    backends: list[Backend]
    measurements: list[Measurement]
    accuracy: list[Accuracy]
    reference: str
    verdict: str
    warnings: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    def backend(self, key: str) -> Backend:
        return next(b for b in self.backends if b.key == key)

    def get(self, key: str, batch: int) -> Measurement | None:
        return next((m for m in self.measurements if m.key == key and m.batch == batch), None)

    def accuracy_of(self, key: str) -> Accuracy | None:
        return next((a for a in self.accuracy if a.key == key), None)

    def to_dict(self, keep_samples: bool = True) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle), "model": self.model, "environment": self.environment, "reference": self.reference,
            "backends": [
                {"key": b.key, "name": b.name, "precision": b.precision, "device": b.device, "mode": b.mode,
                 "build_seconds": b.build_seconds, "notes": b.notes} for b in self.backends
            ],
            "measurements": [m.to_dict(keep_samples) for m in self.measurements],
            "accuracy": [a.__dict__ for a in self.accuracy],
            "verdict": self.verdict, "warnings": self.warnings,
        }


def _torch_device(requested: str) -> str:
    if requested != "auto":
        return requested
    if not has_module("torch"):  # a Jetson without PyTorch: only TensorRT and ONNX Runtime can run
        return "cuda" if nvidia.find_gpu() is not None else "cpu"
    torch = import_optional("torch")

    return "cuda" if torch.cuda.is_available() else "cpu"


def _reference_module(manifest: Manifest):
    role = next((r for r in ("checkpoint", "torchscript") if manifest.has(r)), None)
    if role is None:
        return None
    from rescompile.models.load import load_model

    spec = manifest.spec
    return load_model(str(manifest.file(role)), arch=spec.arch, num_classes=spec.num_classes, input_size=spec.input_size).module


@dataclass
class Lineup:
    """The backends to measure, and why the reference is not PyTorch FP32 eager when it is not."""

    backends: list[Backend]
    notes: list[str] = field(default_factory=list)


def lineup(manifest: Manifest, cfg: BenchConfig, device: str) -> Lineup:
    """Every backend the bundle and this machine allow (filtered by ``cfg.backends``)."""
    wanted = set(cfg.backends) if cfg.backends else None

    def want(key: str) -> bool:
        return wanted is None or key in wanted or key.split("-e2e")[0] in wanted

    out: list[Backend] = []
    notes: list[str] = []
    shape = manifest.spec.input_shape
    has_torch, has_ort = has_module("torch"), has_module("onnxruntime")
    module = _reference_module(manifest) if has_torch else None
    if module is not None:
        out.append(TorchBackend(module, shape, device=device, threads=cfg.threads))  # always: the reference
        for cl, comp in ((True, False), (False, True)):
            if (cl and cfg.channels_last) or (comp and cfg.compile):
                key = "torch-fp32" + ("-cl" if cl else "-compile")
                if want(key):
                    try:
                        out.append(TorchBackend(_reference_module(manifest), shape, device=device, channels_last=cl, compile=comp,
                                                threads=cfg.threads))
                    except Exception as exc:  # torch.compile needs a compiler toolchain; say why it is missing
                        log.warning("skipping %s: %s", key, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    elif not has_torch:
        notes.append("PyTorch is not installed here (pip install 'rescompile[compile]', or NVIDIA's build on a Jetson)")
    else:
        notes.append("the bundle holds no PyTorch model (built from ONNX)")
    if has_ort:
        out.extend(_ort_backends(manifest, cfg, device, want))
    else:
        notes.append("ONNX Runtime is not installed here, so the CPU artifact is not measured (pip install 'rescompile[ort]')")
    if manifest.has(OPENVINO_ROLE) and want("ov-int8"):
        if has_module("openvino"):
            out.append(OpenVINOBackend("ov-int8", "OpenVINO INT8 (rescompile)", manifest.file(OPENVINO_ROLE), "int8", threads=cfg.threads))
        else:
            notes.append("OpenVINO is not installed here, so the bundle's OpenVINO INT8 model is not measured "
                         "(pip install 'rescompile[openvino]')")
    out.extend(_tensorrt_backends(manifest, want, fp32_reference=module is None))
    if not out:
        raise MissingDependencyError(
            f"nothing on this machine can run bundle {manifest.dir}: no PyTorch, no ONNX Runtime, and no TensorRT engine that runs here",
            "Install ONNX Runtime for the CPU artifact (pip install 'rescompile[ort]'), or run it where TensorRT and an NVIDIA GPU are",
        )
    if not any(b.reference for b in out):
        # Without PyTorch the FP32 reference is the FP32 TensorRT engine (same GPU), else ONNX Runtime FP32.
        ref = next((b for b in out if b.key == "trt-fp32"), None) or next((b for b in out if b.key == "ort-fp32"), out[0])
        ref.reference = True
    return Lineup(out, notes)


def _ort_backends(manifest: Manifest, cfg: BenchConfig, device: str, want: Callable[[str], bool]) -> list[Backend]:
    out: list[Backend] = []
    cpu = ["CPUExecutionProvider"]
    if want("ort-fp32"):
        out.append(OrtBackend("ort-fp32", "ONNX Runtime FP32", manifest.file("optimized_onnx"), "fp32", threads=cfg.threads, providers=cpu))
    if manifest.has("cpu_int8_onnx") and want("ort-int8"):
        out.append(OrtBackend("ort-int8", "ONNX Runtime INT8 (CPU artifact)", manifest.file("cpu_int8_onnx"), "int8",
                              threads=cfg.threads, providers=cpu))
    if cfg.from_pixels and manifest.has("cpu_int8_pixels_onnx") and want("ort-int8-pixels"):
        out.append(OrtBackend("ort-int8-pixels", "ONNX Runtime INT8 (CPU artifact, pixels in)", manifest.file("cpu_int8_pixels_onnx"),
                              "int8", threads=cfg.threads, providers=cpu))
    for key, name, path in cfg.extra_onnx:
        extra = OrtBackend(key, name, Path(path), "int8" if "int8" in key else "fp32", threads=cfg.threads, providers=cpu)
        extra.comparison = True
        out.append(extra)
    if device.startswith("cuda") and want("ort-cuda-fp32"):
        ort = import_optional("onnxruntime")

        if "CUDAExecutionProvider" in ort.get_available_providers():
            out.append(OrtBackend("ort-cuda-fp32", "ONNX Runtime FP32 (CUDA EP)", manifest.file("optimized_onnx"), "fp32",
                                  providers=["CUDAExecutionProvider", "CPUExecutionProvider"]))
    return out


def _tensorrt_backends(manifest: Manifest, want: Callable[[str], bool], fp32_reference: bool = False) -> list[Backend]:
    if manifest.engine is None or nvidia.tensorrt_version() is None or nvidia.find_gpu() is None:
        return []
    from rescompile.runtime import load

    precision = manifest.engine.get("precision", manifest.precision or "fp32")
    out: list[Backend] = []
    for e2e in (False, True):
        key = f"trt-{precision}" + ("-e2e" if e2e else "")
        if want(key):
            out.append(TrtBackend(key, f"TensorRT {precision.upper()}" + (" end-to-end" if e2e else ""), load(manifest.dir, backend="tensorrt"),
                                  precision, end_to_end=e2e, build_seconds=manifest.engine.get("build_seconds")))
    if precision in ("int8", "best") and want("trt-fp16"):
        out.append(_scratch_engine(manifest, "fp16"))  # users must see FP16 next to INT8
    if fp32_reference and precision != "fp32":
        out.append(_scratch_engine(manifest, "fp32"))  # no PyTorch here: the FP32 engine is the reference
    return out


def _scratch_engine(manifest: Manifest, precision: str) -> Backend:
    """Build an FP16 or FP32 engine of the same model in a scratch folder (build time reported apart)."""
    from rescompile.config import EngineConfig, Precision
    from rescompile.pipeline import write_fp16
    from rescompile.runtime.tensorrt import TensorRTRunner
    from rescompile.stages.build import engine_from_onnx, plan_engine

    scratch = Path(tempfile.mkdtemp(prefix=f"rescompile-{precision}-"))
    files = {"optimized_onnx": manifest.file("optimized_onnx")}
    if precision == "fp16":
        files["fp16_onnx"] = write_fp16(files["optimized_onnx"], scratch / "model_fp16.onnx")
    profile = (manifest.engine or {}).get("profiles", [{}])[0]
    cfg = EngineConfig(min_batch=profile.get("min", [1])[0], opt_batch=profile.get("opt", [8])[0], max_batch=profile.get("max", [32])[0])
    # A copy of the bundle's timing cache (and its record): the bundle's files are hashed and stay as they are.
    for name in ("timing.cache", "timing.cache.json"):
        if (manifest.dir / name).is_file():
            shutil.copyfile(manifest.dir / name, scratch / name)
    cfg = replace(cfg, timing_cache=scratch / "timing.cache")
    input_name = (manifest.input or {}).get("name", "input")
    gpu = nvidia.find_gpu()
    plan = plan_engine(Precision(precision), nvidia.tensorrt_version() or "", files, input_name, manifest.spec.input_shape, cfg, gpu=gpu)
    engine = engine_from_onnx(plan, scratch, gpu=gpu)
    runner = TensorRTRunner(engine.path, spec=manifest.spec)
    return TrtBackend(f"trt-{precision}", f"TensorRT {precision.upper()}", runner, precision, build_seconds=engine.build_seconds)


def _eval_images(manifest: Manifest, data: DataConfig | None, limit: int, notes: list[str] | None = None):
    from rescompile.data.datasets import load_dataset

    if data is None:
        if manifest.spec.dataset not in ("digits", "cifar10"):
            return None
        data = DataConfig(manifest.spec.dataset)
        try:
            test = load_dataset(data, model_input=manifest.spec.input_shape).test
        except MissingDependencyError as exc:  # the model's own test split needs an extra: latency only
            if notes is not None:
                notes.append(f"no accuracy: {exc} (or pass --eval-data)")
            return None
    else:
        test = load_dataset(data, model_input=manifest.spec.input_shape).test
    if len(test) > limit:
        test = test.subset(np.linspace(0, len(test) - 1, limit).astype(np.int64))
    return test


def _timing_input(images, spec, batch: int, seed: int = 0) -> np.ndarray:
    """Real images when there are any (tiled to the batch), else fixed random data."""
    if images is not None and len(images):
        idx = np.arange(batch) % len(images)
        return images.batch(idx, spec.preprocessing)
    return np.random.default_rng(seed).standard_normal((batch, *spec.input_shape)).astype(np.float32)


def _timing_pixels(images, spec, batch: int, seed: int = 0) -> np.ndarray:
    """uint8 RGB pixels at the input size: real images when there are any, else fixed random pixels."""
    size = spec.preprocessing.input_size
    if images is not None and len(images):
        try:
            return spec.preprocessing.pixels(images.images(np.arange(batch) % len(images)))
        except DataError as exc:
            raise ConfigError(f"--from-pixels needs images, and the evaluation data are model-ready tensors ({exc.message})",
                              "Pass --eval-data with images, or drop --from-pixels") from exc
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def _logits(backend: Backend, images, spec, batch: int) -> np.ndarray:
    from rescompile.data.images import iter_batches

    step = min(batch, backend.max_batch or batch)
    batches = iter_batches(images, spec.preprocessing, step, pixels=backend.takes_pixels)
    return np.concatenate([backend.logits(x) for x, _ in batches])


def run_bench(cfg: BenchConfig = BenchConfig(), on_progress: Progress | None = None) -> BenchReport:
    from rescompile.bench.report import verdict_and_warnings, write_outputs
    from rescompile.stages.calibrate.accuracy import compare

    progress = on_progress or (lambda _t, _d, _n: None)
    bundle = Path(cfg.bundle) if cfg.bundle else default_bundle_dir()
    if cfg.bundle is None and not bundle.exists():
        raise ConfigError(f"no bundle at {bundle}", "Run `rescompile build` first, or pass the bundle directory")
    if not cfg.batch_sizes or min(cfg.batch_sizes) < 1:
        raise ConfigError(f"batch sizes must be positive, got {cfg.batch_sizes}", "Pass e.g. --batch-sizes 1,8,32")
    manifest = read_manifest(bundle)
    spec = manifest.spec
    device = _torch_device(cfg.device)
    chosen = lineup(manifest, cfg, device)
    backends, notes = chosen.backends, chosen.notes
    from rescompile.bench.peers import peer_backends

    backends.extend(peer_backends(manifest, cfg, backends, notes, progress))
    if not backends:
        raise ConfigError(f"no backend left to run (asked for {', '.join(cfg.backends or ())})", "Check --backends")
    images = _eval_images(manifest, cfg.eval_data, cfg.max_eval_images, notes)
    if cfg.from_pixels:
        _timing_pixels(images, spec, 1)  # data that cannot give pixels say so before anything is timed
    budget = TimingBudget(cfg.warmup_s, 3, cfg.min_runs, cfg.max_runs, cfg.max_s)
    reference = next(b for b in backends if b.reference)
    measurements: list[Measurement] = []
    batches = sorted(set(cfg.batch_sizes))
    rounds = max(1, cfg.rounds)
    # Backends take turns, in alternating order, so slow drifts of the machine (clocks, heat,
    # other load) fall on every backend alike instead of on whichever ran last.
    round_budget = replace(budget, min_runs=max(1, -(-budget.min_runs // rounds)), max_runs=max(1, budget.max_runs // rounds),
                           max_s=budget.max_s / rounds)
    samples: dict[tuple[str, int], TimingStats] = {}
    energy: dict[tuple[str, int], list[float]] = {}
    skipped: dict[tuple[str, int], str] = {}
    total, done = rounds * len(backends) * len(batches), 0
    try:
        for r in range(rounds):
            for backend in (backends if r % 2 == 0 else backends[::-1]):
                for batch in batches:
                    progress("latency", done, total)
                    done += 1
                    key = (backend.key, batch)
                    if key in skipped:
                        continue
                    if backend.max_batch and batch > backend.max_batch:
                        skipped[key] = f"engine profile max batch is {backend.max_batch}"
                        continue
                    try:
                        with PowerSampler() as power:
                            fn = (backend.prepare_pixels(_timing_pixels(images, spec, batch), spec.preprocessing) if cfg.from_pixels
                                  else backend.prepare(_timing_input(images, spec, batch)))
                            stats = measure(fn, batch, round_budget)
                    except (RuntimeError, MemoryError) as exc:  # out of memory at a large batch: what fits
                        skipped[key] = str(exc).splitlines()[0][:120]
                        continue
                    if power.mean_watts:
                        energy.setdefault(key, []).append(power.mean_watts * stats.p50 / 1000.0 / batch)
                    if key in samples:
                        old = samples[key]
                        stats = TimingStats(batch, old.samples_ms + stats.samples_ms, old.warmup_runs + stats.warmup_runs,
                                            old.warmup_s + stats.warmup_s)
                    samples[key] = stats
        for backend in backends:
            for batch in batches:
                key = (backend.key, batch)
                if key in skipped:
                    measurements.append(Measurement(backend.key, batch, None, skipped[key]))
                else:
                    e = energy.get(key)
                    measurements.append(Measurement(backend.key, batch, samples[key], energy_j_per_image=sum(e) / len(e) if e else None))
        progress("latency", total, total)
        for m in measurements:
            ref = next((r for r in measurements if r.key == reference.key and r.batch == m.batch and r.stats), None)
            if ref is not None and m.stats is not None:
                m.speedup = ref.stats.p50 / m.stats.p50
        accuracy: list[Accuracy] = []
        if images is not None and len(images):
            ref_logits = _logits(reference, images, spec, 32)
            labels = None if images.labels is None else np.asarray(images.labels)
            for i, backend in enumerate(backends):
                progress("accuracy", i, len(backends))
                a = compare(_logits(backend, images, spec, 32), ref_logits, labels)
                accuracy.append(Accuracy(backend.key, a.top1, a.top1_agreement, a.cosine, a.images))
            progress("accuracy", len(backends), len(backends))
    finally:
        for backend in backends:
            backend.close()
    env = environment(cfg.threads)
    if cfg.from_pixels:
        env["input"] = "uint8 pixels: float-input backends normalise them inside the timed call"
    peers = [b.about for b in backends if b.comparison and b.about]
    if peers:
        env["peers"] = peers
    report = BenchReport(bundle, spec.arch, env, backends, measurements, accuracy, reference.key, "")
    report.verdict, report.warnings = verdict_and_warnings(report)
    if reference.key != "torch-fp32":
        notes.insert(0, f"ratios are against {reference.name}, not PyTorch FP32 eager")
    report.warnings[:0] = notes
    report.files = write_outputs(report, Path(cfg.output_dir) if cfg.output_dir else bundle / "bench")
    return report
