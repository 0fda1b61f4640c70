"""Load a model from any source: an architecture name, a checkpoint, TorchScript, or ONNX."""

from __future__ import annotations

import logging
import pickle
import warnings
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rescompile._io import expand_user, loads_json
from rescompile._lazy import import_optional
from rescompile.data.preprocess import PreprocessingOverride
from rescompile.errors import ModelError
from rescompile.models.checkpoint import is_rescompile_checkpoint
from rescompile.models.registry import ARCHITECTURES, arch_info, create_model, default_preprocessing, resolve_options
from rescompile.models.spec import ModelSpec

log = logging.getLogger(__name__)
# A named architecture without pretrained weights is initialised from this seed, so two builds
# of `resnet18` are the same model (same latency, same calibration, same accuracy gate).
INIT_SEED = 0

TORCHSCRIPT_SPEC_FILE = "rescompile_spec.json"
_ONNX_SUFFIXES = (".onnx",)


@dataclass
class LoadedModel:
    """A model ready for export: a torch module, or an ONNX file that skips export."""

    spec: ModelSpec
    source: str
    kind: str  # "name" | "checkpoint" | "torchscript" | "onnx"
    module: Any = None  # torch.nn.Module or torch.jit.ScriptModule, in eval mode
    onnx_path: Path | None = None
    metrics: dict[str, Any] | None = None
    intake: Any = None  # rescompile.models.intake.IntakeReport of an ONNX source

    @property
    def name(self) -> str:
        if self.kind == "name":
            return self.source
        return Path(self.source).stem


def load_model(
    source: str | Path,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    input_size: int | None = None,
    pretrained: bool = False,
    trust_checkpoint: bool = False,
    preprocessing: PreprocessingOverride | None = None,
    data_size: int | None = None,
) -> LoadedModel:
    """Load ``source``. ``arch``/``num_classes``/``input_size`` fill in what the file lacks, and
    ``preprocessing`` (what the user named: --mean, --std, ...) what it does not say about its input.
    ``data_size``: the image size the calibration data hold, for an ONNX model whose size is dynamic.

    Checkpoints are read with ``torch.load(weights_only=True)``; ``trust_checkpoint=True``
    allows full unpickling (runs code from the file: only for files you trust).
    """
    text = str(source)
    if text.lower() in ARCHITECTURES and not Path(text).exists():
        return _from_name(text.lower(), num_classes, input_size, pretrained)
    path = expand_user(text)
    if not path.exists():
        raise ModelError(
            f"no such model file or architecture name: {text!r}",
            f"Give a path to a .pt/.pth/.onnx file or one of: {', '.join(ARCHITECTURES)}",
        )
    if path.is_dir():
        raise ModelError(f"{path} is a directory, not a model file", "Pass the .pt, .ts or .onnx file itself")
    if path.suffix.lower() in _ONNX_SUFFIXES or _looks_like_onnx(path):
        return _from_onnx(path, input_size, num_classes, preprocessing, data_size)
    if zipfile.is_zipfile(path) and _is_torchscript(path):
        loaded = _from_torchscript(path, arch, num_classes, input_size)
    else:
        loaded = _from_checkpoint(path, arch, num_classes, input_size, trust_checkpoint)
    if preprocessing is not None and not preprocessing.empty:
        log.warning("%s: using the preprocessing given on the command line instead of the model's own", path)
        loaded = replace(loaded, spec=replace(loaded.spec, preprocessing=preprocessing.apply(loaded.spec.preprocessing)))
    return loaded


def _from_name(name: str, num_classes: int | None, input_size: int | None, pretrained: bool) -> LoadedModel:
    info = arch_info(name)
    prep = default_preprocessing(name, input_size)
    options = resolve_options(name, prep.input_size, pretrained=pretrained)
    classes = num_classes or info.default_classes
    if pretrained:
        module = create_model(name, classes, **options).eval()
    else:
        torch = import_optional("torch")
        with torch.random.fork_rng(devices=[]):  # the same weights on every run, the caller's RNG untouched
            torch.manual_seed(INIT_SEED)
            module = create_model(name, classes, **options).eval()
        log.warning("%s has freshly initialised weights (seed %d; fine for latency, not for accuracy)", name, INIT_SEED)
    spec = ModelSpec(name, classes, prep, (), options, None)
    return LoadedModel(spec, name, "name", module=module)


def _looks_like_onnx(path: Path) -> bool:
    # An ONNX ModelProto starts with field 1 (ir_version, varint): byte 0x08.
    with open(path, "rb") as fh:
        head = fh.read(2)
    return len(head) == 2 and head[0] == 0x08 and not zipfile.is_zipfile(path)


def _from_onnx(
    path: Path, input_size: int | None, num_classes: int | None, override: PreprocessingOverride | None, data_size: int | None = None,
) -> LoadedModel:
    from rescompile.models.onnx_model import read_onnx, spec_from_onnx

    model, intake = read_onnx(path)  # foreign files are refused here, in one line, before any stage runs
    spec = spec_from_onnx(model, path, input_size=input_size, num_classes=num_classes, override=override, data_size=data_size,
                          report=intake)
    return LoadedModel(spec, str(path), "onnx", onnx_path=path, intake=intake)


def _is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in n or n.startswith("code/") for n in zf.namelist())


def _from_torchscript(path: Path, arch: str | None, num_classes: int | None, input_size: int | None) -> LoadedModel:

    torch = import_optional("torch")

    extra = {TORCHSCRIPT_SPEC_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, but users still ship it
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError) as exc:
        raise ModelError(f"{path} is not a loadable TorchScript file ({exc.__class__.__name__})", "Re-save it with torch.jit.save") from exc
    if extra[TORCHSCRIPT_SPEC_FILE]:
        spec = ModelSpec.from_dict(loads_json(extra[TORCHSCRIPT_SPEC_FILE]))
    else:
        spec = _probe_spec(module, arch or "torchscript", num_classes, input_size, path)
    return LoadedModel(spec, str(path), "torchscript", module=module.eval())


def _probe_spec(module, arch: str, num_classes: int | None, input_size: int | None, path: Path) -> ModelSpec:
    """Spec for a module without metadata: run one image to learn the number of classes."""
    torch = import_optional("torch")

    if arch in ARCHITECTURES:
        prep = default_preprocessing(arch, input_size)
    else:
        from rescompile.data.preprocess import (
            IMAGENET_MEAN,
            IMAGENET_STD,
            Preprocessing,
        )

        size = input_size or 224
        if input_size is None:
            log.warning("%s carries no input size: assuming 224x224 (pass --input-size)", path)
        prep = Preprocessing(size, IMAGENET_MEAN, IMAGENET_STD, resize=round(size * 256 / 224) if size >= 96 else None)
    try:
        with torch.inference_mode():
            out = module.eval()(torch.zeros(1, *prep.shape))
    except Exception as exc:  # any failure of user code on a probe input
        raise ModelError(
            f"{path} does not run on a 1x{'x'.join(map(str, prep.shape))} input ({exc.__class__.__name__}: {str(exc)[:120]})",
            "Pass the model's --input-size",
        ) from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ModelError(f"{path} does not return (N, classes) logits", "rescompile takes image classifiers")
    if num_classes is not None and out.shape[1] != num_classes:
        raise ModelError(f"{path} returns {out.shape[1]} classes, not {num_classes}", "Fix --num-classes")
    return ModelSpec(arch, int(out.shape[1]), prep, (), {}, None)


def _torch_load(path: Path, trust: bool) -> Any:
    torch = import_optional("torch")

    try:
        return torch.load(str(path), map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc) and not _imports_objects(path):  # not a refused object: the bytes themselves are bad
            raise ModelError(f"{path} is not a readable PyTorch checkpoint (corrupt pickle)", "Check the file") from exc
        raise ModelError(
            f"{path} holds Python objects that a weights-only load refuses (loading it could run code from the file)",
            "Re-save it as a state dict, or pass --trust-checkpoint if you trust its origin",
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path} is not a readable PyTorch checkpoint ({exc.__class__.__name__})", "Check the file") from exc


# Opcodes by which a pickle names Python objects to import and call: what a weights-only load refuses.
_OBJECT_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"}


def _imports_objects(path: Path) -> bool:
    """Whether the checkpoint's pickle stream imports Python objects (read with pickletools,
    which only decodes opcodes and never executes anything). Both a bare pickle and PyTorch's
    zip format (its data.pkl) are understood; anything unreadable counts as no."""
    import pickletools

    try:
        data = path.read_bytes()
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                name = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                if name is None:
                    return False
                data = zf.read(name)
        return any(op.name in _OBJECT_OPCODES for op, _arg, _pos in pickletools.genops(data))
    except Exception:  # truncated or not a pickle at all: "corrupt", not "refused"
        return False


def _unwrap_state_dict(obj: Any) -> dict[str, Any] | None:
    torch = import_optional("torch")

    for key in ("state_dict", "model_state_dict", "model", "net"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {k.removeprefix("module."): v for k, v in obj.items()}
    return None


# Written by every state dict, needed by none (BatchNorm fills in a missing one): not needed for a match.
_OPTIONAL_BUFFERS = ("num_batches_tracked",)


def _essential(keys) -> set[str]:
    return {k for k in keys if not k.endswith(_OPTIONAL_BUFFERS)}


def _under_wrapper(state: dict[str, Any], expected: set[str], path: Path) -> dict[str, Any]:
    """The model's weights when a wrapper saved them under a prefix: "model." (PyTorch Lightning's
    attribute), "_orig_mod." (torch.compile), "module." (DataParallel), or nested ones."""
    if _essential(state) >= expected:
        return state
    heads = {k.split(".", 1)[0] + "." for k in state if "." in k}
    while heads:  # shortest prefix first; each one is tried once (deeper ones only extend it)
        prefix = min(heads, key=len)
        heads.discard(prefix)
        inner = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if _essential(inner) == expected:
            skipped = len(state) - len(inner)
            log.info("%s: the model's weights are under %r%s", path, prefix, f" ({skipped} other entries ignored)" if skipped else "")
            return inner
        if prefix.count(".") < 3:  # one level deeper: "module._orig_mod.", "model.backbone."
            heads |= {prefix + k.split(".", 1)[0] + "." for k in inner if "." in k}
    return state


def _load_state(module, state: dict[str, Any], arch: str, path: Path) -> None:
    state = _under_wrapper(state, _essential(module.state_dict()), path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise ModelError(
            f"{path} does not match architecture {arch!r}: {detail[:200]}",
            "Pass the --arch the checkpoint was trained with",
        ) from exc


def _from_checkpoint(
    path: Path, arch: str | None, num_classes: int | None, input_size: int | None, trust: bool
) -> LoadedModel:
    torch = import_optional("torch")

    obj = _torch_load(path, trust)
    if is_rescompile_checkpoint(obj):
        spec = ModelSpec.from_dict(obj["spec"])
        if arch and arch != spec.arch:
            raise ModelError(f"{path} is a {spec.arch} checkpoint, not {arch}", f"Drop --arch or use --arch {spec.arch}")
        options = {k: v for k, v in spec.options.items() if k != "pretrained"}
        module = create_model(spec.arch, spec.num_classes, **options)
        _load_state(module, obj["state_dict"], spec.arch, path)
        return LoadedModel(spec, str(path), "checkpoint", module=module.eval(), metrics=obj.get("metrics"))
    if isinstance(obj, torch.nn.Module):  # only reachable with trust_checkpoint
        return LoadedModel(_probe_spec(obj, arch or "module", num_classes, input_size, path), str(path), "checkpoint", module=obj.eval())
    state = _unwrap_state_dict(obj)
    if state is None:
        raise ModelError(f"{path} holds neither a state dict nor a rescompile checkpoint", "Save model.state_dict()")
    if arch is None:
        raise ModelError(f"{path} is a plain state dict without its architecture", "Pass --arch (and --num-classes if not 10/1000)")
    fc = next((v for k, v in state.items() if k.endswith("fc.weight")), None)
    classes = num_classes or (int(fc.shape[0]) if fc is not None else None)
    prep = default_preprocessing(arch, input_size)
    options = resolve_options(arch, prep.input_size)
    module = create_model(arch, classes, **options)
    _load_state(module, state, arch, path)
    spec = ModelSpec(arch, classes or arch_info(arch).default_classes, prep, (), options, None)
    return LoadedModel(spec, str(path), "checkpoint", module=module.eval())
