"""Every stage's options as frozen dataclasses. Every default lives here, once.

``None`` in a field means "use the default that fits the rest of the configuration"
(for example ``augment=None`` picks the augmentation the dataset supports).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from rescompile.data.preprocess import PreprocessingOverride

# The embedded default: a small ResNet trained on scikit-learn's bundled digits images.
DEFAULT_ARCH = "resnet20"
DEFAULT_DATASET = "digits"
DEFAULT_OPSET = 17  # TensorRT 10 parses opset <= 20; 17 is where LayerNormalization etc. landed.
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


class Optimizer(str, Enum):
    sgd = "sgd"
    adam = "adam"
    adamw = "adamw"


class Schedule(str, Enum):
    cosine = "cosine"
    step = "step"
    constant = "constant"


def rescompile_home() -> Path:
    """Where cached models and default build outputs go: $RESCOMPILE_HOME, else the user cache."""
    env = os.environ.get("RESCOMPILE_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rescompile"


def default_bundle_dir() -> Path:
    """Where `rescompile build` with no arguments writes the embedded default's bundle."""
    return rescompile_home() / "builds" / f"{DEFAULT_ARCH}-{DEFAULT_DATASET}"


def openvino_cache_dir() -> Path:
    """OpenVINO's model cache (its CACHE_DIR): compiled blobs keyed by model, device and settings,
    so a second load of the same file skips compilation."""
    return rescompile_home() / "cache" / "openvino"


def sample_calibration_dir() -> Path | None:
    """The repository's real digit calibration images (calibration/digits), when this is a checkout."""
    folder = Path(__file__).resolve().parent.parent / "calibration" / "digits"
    return folder if folder.is_dir() else None


@dataclass(frozen=True)
class DataConfig:
    """Which images to use. ``dataset`` is 'digits', 'cifar10', an image folder or a .npy/.npz file."""

    dataset: str = DEFAULT_DATASET
    data_dir: Path | None = None  # root for cifar10 (where cifar-10-batches-py/bin live)
    download: bool = False  # only cifar10; never done unless asked
    seed: int = 0  # fixes the train/val/test split of datasets that ship without one
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    # .npy/.npz: "images" (uint8 or [0, 1] floats, preprocessed by the model's spec), "tensors"
    # (float32 shaped like the model input, fed as they are), or "auto": tensors when the floats have
    # the model input's exact shape and leave [0, 1] (normalised data cannot be pixels), else images.
    data_format: str = "auto"


@dataclass(frozen=True)
class TrainConfig:
    arch: str = DEFAULT_ARCH
    data: DataConfig = field(default_factory=DataConfig)
    output_dir: Path | None = None  # None: <home>/runs/<arch>-<dataset>
    epochs: int = 30
    batch_size: int = 64
    optimizer: Optimizer = Optimizer.sgd
    lr: float | None = None  # None: 0.1 for SGD, 1e-3 for Adam/AdamW
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # He et al. 2016 use 1e-4 on CIFAR; 5e-4 suits the small digits set
    schedule: Schedule = Schedule.cosine
    milestones: tuple[float, ...] = (0.5, 0.75)  # step schedule: fractions of training
    gamma: float = 0.1
    warmup_epochs: int = 1
    label_smoothing: float = 0.0
    seed: int = 0
    zero_init_residual: bool = False  # Goyal et al. 2017: last BN gamma of each branch = 0
    augment: bool | None = None  # None: random shifts (+ flips where the dataset allows)
    input_size: int | None = None  # None: the dataset's native size (32 for digits/cifar10)
    small_input: bool | None = None  # torchvision archs: 3x3 stem, no max-pool; None: auto (< 96 px)
    pretrained: bool = False  # torchvision archs: ImageNet weights (needs network or a warm cache)
    max_train_images: int | None = None  # train on a deterministic subset
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_threads: int | None = None  # torch CPU threads; None leaves torch's default

    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 0.1 if self.optimizer == Optimizer.sgd else 1e-3


@dataclass(frozen=True)
class ExportConfig:
    opset: int = DEFAULT_OPSET
    dynamic_batch: bool = True
    simplify: bool = True  # onnxsim; falls back to plain shape inference when unavailable
    check: bool = True  # compare ONNX Runtime with PyTorch after export
    check_batch_sizes: tuple[int, ...] = (1, 4)
    # The check fails above atol + rtol * max|logit|. Export is exact up to float32
    # rounding, which for 100+ layer nets reaches ~3e-4 on logits of ~2 (PyTorch's own
    # float32 error against float64); real export bugs are of the order of the logits.
    check_atol: float = 1e-4
    check_rtol: float = 1e-3
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"  # with FP16 allowed for layers that have no INT8 kernel
    best = "best"  # int8 + fp16, TensorRT picks the fastest per layer

    @property
    def needs_calibration(self) -> bool:
        return self in (Precision.int8, Precision.best)


class Int8Source(str, Enum):
    auto = "auto"  # the Q/DQ ONNX (explicit quantization), the only path on TensorRT 11
    qdq = "qdq"
    cache = "cache"  # TensorRT 10 implicit INT8 from calibration.cache (deprecated there, gone in 11)


class HardwareCompat(str, Enum):
    none = "none"  # the engine runs on GPUs of the building GPU's compute capability only
    ampere_plus = "ampere+"  # any GPU of compute capability >= 8.0 (some speed lost)
    same_cc = "same-cc"  # any GPU of the same compute capability (newer TensorRT 10 releases and 11)


@dataclass(frozen=True)
class EngineConfig:
    """TensorRT builder options (see TensorRT's developer guide, "Optimization Profiles",
    "Timing Cache", "Hardware Compatibility", "Working with DLA")."""

    int8_source: Int8Source = Int8Source.auto
    min_batch: int = 1
    opt_batch: int = 8  # the batch the kernels are tuned for
    max_batch: int = 32
    workspace_mib: int | None = None  # None: TensorRT's default (the device's memory)
    optimization_level: int | None = None  # builder optimization level 0-5; None: TensorRT's default (3)
    timing_cache: Path | None = None  # None: timing.cache in the bundle, loaded when present, saved after
    dla_core: int | None = None  # Jetson DLA core; layers DLA cannot run fall back to the GPU
    gpu_fallback: bool = True
    hardware_compatibility: HardwareCompat = HardwareCompat.none
    version_compatible: bool = False  # engine runs on later TensorRT versions of the same major (lean runtime)
    target_trt_version: str | None = None  # plan for this TensorRT when none is installed here (manifest only)


class CalibMethod(str, Enum):
    entropy = "entropy"
    max = "max"
    percentile = "percentile"
    mse = "mse"
    auto = "auto"


@dataclass(frozen=True)
class CalibConfig:
    method: CalibMethod = CalibMethod.entropy  # TensorRT's default (EntropyCalibration2)
    percentile: float = 99.99
    # TensorRT's guidance for ImageNet CNNs is about 500 calibration images; fewer warn.
    num_images: int = 512
    advised_images: int = 500
    min_images: int = 16  # below this the statistics are noise: refuse
    batch_size: int = 32
    seed: int = 0  # which images are sampled
    trt_version: str = "10.3.0"  # JetPack 6.x ships TensorRT 10.3: the cache path's main user
    cache_algorithm: str | None = None  # None: EntropyCalibration2 (MinMaxCalibration for max)
    max_accuracy_drop: float | None = None  # points of top-1; None: quantize every Conv/Gemm
    sensitivity: bool = False  # per-layer accuracy effect of quantizing each Conv alone
    reduce_range: bool | None = None  # CPU artifact: 7-bit weights; None: when the CPU lacks VNNI
    # The safety net (stages/calibrate/safety.py): when INT8 loses more than this many points of
    # top-1, or agrees with FP32 on fewer images than this, other calibrators are tried, then float layers.
    # Neither bar is ever finer than one of the images judged (safety.bars says why).
    fallback: bool = True
    fallback_max_drop: float = 1.0
    fallback_min_agreement: float = 0.98
    # (method, percentile) pairs that --method auto tries on the held-out split
    auto_candidates: tuple[tuple[str, float], ...] = (
        ("entropy", 0.0), ("percentile", 99.99), ("percentile", 99.999), ("mse", 0.0), ("max", 0.0),
    )


@dataclass(frozen=True)
class BuildConfig:
    """The main job. ``source=None`` is the embedded default model."""

    source: str | None = None
    output_dir: Path | None = None  # None: <home>/builds/<model name>
    retrain: bool = False  # source=None: train the default from scratch instead of the embedded weights
    precision: Precision = Precision.int8
    export: ExportConfig = field(default_factory=ExportConfig)
    calib: CalibConfig = field(default_factory=CalibConfig)
    calib_data: DataConfig | None = None  # None: the model's own training data, when known
    eval_data: DataConfig | None = None  # None: the test split of the model's own data
    engine: EngineConfig = field(default_factory=EngineConfig)
    bench: bool = True  # end with a quick `rescompile bench` (batch 1 and 8) of the bundle
    trust_checkpoint: bool = False  # full unpickling of the checkpoint (runs code from it): trusted files only
    device: str = "auto"
    # Used when the source carries no metadata (plain state dicts, TorchScript, bare ONNX):
    arch: str | None = None
    num_classes: int | None = None
    input_size: int | None = None
    preprocessing: PreprocessingOverride | None = None  # --mean/--std/--scale/...: what the model takes
    # An already-quantized source (stages/calibrate/prequant.py): the float model its accuracy is measured against;
    # None: its own Q/DQ-stripped graph (which says nothing about the original quantization's loss).
    fp32_reference: Path | None = None


@dataclass(frozen=True)
class BenchConfig:
    """rescompile bench: latency and accuracy of a bundle's backends against FP32 PyTorch eager."""

    bundle: Path | None = None  # None: the default build's bundle
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    threads: int | None = None  # CPU threads for PyTorch and ONNX Runtime; None: all cores
    device: str = "auto"  # auto | cpu | cuda: where PyTorch runs (TensorRT always on the GPU)
    backends: tuple[str, ...] | None = None  # None: every backend this machine can run
    channels_last: bool = False  # also PyTorch eager in channels_last
    compile: bool = False  # also torch.compile
    eval_data: DataConfig | None = None  # None: the model's own test split, when known
    max_eval_images: int = 1000
    warmup_s: float = 1.0
    min_runs: int = 20
    max_runs: int = 1000
    max_s: float = 5.0
    rounds: int = 3  # backends take turns this many times (alternating order); samples are pooled
    output_dir: Path | None = None  # None: <bundle>/bench
    extra_onnx: tuple[tuple[str, str, Path], ...] = ()  # (key, display name, path): more ORT models to compare
    peers: tuple[str, ...] = ("ort", "nncf")  # other tools' INT8 of the same model, measured beside rescompile's CPU INT8
    # Time every backend from uint8 pixels (float-input ones normalise inside the timed call) and
    # add the pixel-input CPU artifact: latency as an app holding camera frames sees it.
    from_pixels: bool = False
