"""The runtime an edge app embeds: one ``load`` for bundles, engines, ONNX files and PyTorch models,
and runners that share one lifecycle (load, infer/classify, close; context managers).

    from rescompile import runtime
    with runtime.load("out/resnet20-digits") as runner:   # TensorRT when it can run, else the faster CPU engine
        print(runner.classify("seven.png", top_k=3))

Importing this package loads no torch, onnxruntime or tensorrt: each runner imports its own
library when it is created.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any

from rescompile._io import expand_user
from rescompile import nvidia
from rescompile._lazy import has_module
from rescompile.bundle import MANIFEST, BundleError, Manifest, read_manifest, verify
from rescompile.errors import ConfigError, ModelError, MissingDependencyError
from rescompile.models.registry import ARCHITECTURES
from rescompile.runtime.base import Prediction, Runner, RunnerError
from rescompile.runtime.compat import RuntimeMismatchError, check_engine

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "openvino", "tensorrt", "torch")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
ONNX_SUFFIXES = (".onnx",)
# ONNX files to run on CPU when a bundle names no cpu_artifact (format 1), best first.
CPU_FALLBACK_ROLES = ("cpu_int8_onnx", "optimized_onnx", "fp32_onnx")
PIXELS_ROLE = "cpu_int8_pixels_onnx"
OPENVINO_ROLE = "openvino_int8_onnx"

_RUNNERS = {
    "OnnxRuntimeRunner": "rescompile.runtime.onnxruntime",
    "OpenVINORunner": "rescompile.runtime.openvino",
    "TorchRunner": "rescompile.runtime.torch",
    "TensorRTRunner": "rescompile.runtime.tensorrt",
}

__all__ = [
    "BACKENDS", "BundleError", "Prediction", "Runner", "RunnerError", "RuntimeMismatchError", "check_engine", "load",
    *_RUNNERS,
]


def __getattr__(name: str) -> Any:
    module = _RUNNERS.get(name)
    if module is None:
        raise AttributeError(f"module 'rescompile.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def load(
    path: str | os.PathLike[str],
    *,
    backend: str | None = None,
    providers: list[str] | None = None,
    threads: int | None = None,
    device: str | None = None,
    verify_files: bool = True,
    allow_host_code: bool | None = None,
    pixels: bool | None = None,
) -> Runner:
    """A runner for ``path``: a bundle directory (or its manifest.json), a TensorRT engine
    (.engine/.plan), an ONNX file, a checkpoint/TorchScript file, or an architecture name.

    ``backend`` forces "onnxruntime", "openvino", "tensorrt" or "torch"; None picks TensorRT for a
    bundle with an engine when TensorRT and an NVIDIA GPU are here, else the CPU engine the build
    measured faster (manifest ``cpu_artifact.choice``): ONNX Runtime on the CPU artifact or OpenVINO
    on the bundle's OpenVINO form, the other one when that is not installed; where the faster engine
    changed with the batch size (``choice.dispatch``) and both are installed, each call runs on the
    engine measured faster at its size (``runner_for(n)``). "openvino" runs the
    OpenVINO form when the bundle has one (else the CPU artifact). ``providers``/``threads`` go to ONNX Runtime (threads also to PyTorch), ``device``
    to PyTorch. ``verify_files`` checks the sha256 of the bundle file that will run.
    ``allow_host_code`` lets TensorRT run the lean runtime a version-compatible engine carries
    (code stored in the plan: only for engines you trust); None allows it when the bundle's
    manifest says the engine was built version-compatible. ``pixels``: on ONNX Runtime or OpenVINO, classify
    (and infer_pixels) run the bundle's pixel-input CPU artifact, which takes uint8 pixels with the
    normalisation folded in; None uses it when the bundle has one, False never, True requires it.
    """
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}", f"Use one of: {', '.join(BACKENDS)}, or None to choose")
    text = os.fspath(path)
    p = expand_user(text)
    if p.is_dir() or (p.name == MANIFEST and p.is_file()):
        return _load_bundle(read_manifest(p), backend, providers, threads, verify_files, allow_host_code, pixels)
    suffix = p.suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        _require_backend(backend, "tensorrt", f"{p} is a TensorRT engine")
        return _load_engine_file(p, verify_files, allow_host_code)
    if suffix in ONNX_SUFFIXES:
        if backend != "openvino":
            _require_backend(backend, "onnxruntime", f"{p} is an ONNX model (build a bundle with `rescompile build` for TensorRT)")
        _require_file(p)
        if backend == "openvino":
            _chosen("openvino", p, "an ONNX file, asked for")
            return _openvino_runner(p, None, providers, threads)
        _chosen("onnxruntime", p, "an ONNX file")
        return _onnxruntime_runner(p, None, providers, threads)
    _require_backend(backend, "torch", f"{text} is a PyTorch model (a checkpoint, TorchScript or an architecture name)")
    if not p.exists() and text.lower() not in ARCHITECTURES:  # say so before importing PyTorch
        raise ModelError(
            f"no such bundle, model file or architecture name: {text!r}",
            f"Pass a bundle directory, a .engine/.onnx/.pt/.ts file, or one of: {', '.join(ARCHITECTURES)}",
        )
    _chosen("torch", text, "a PyTorch model source")
    from rescompile.runtime.torch import TorchRunner

    return TorchRunner(text, device=device, threads=threads)


def _require_backend(backend: str | None, needed: str, what: str) -> None:
    if backend is not None and backend != needed:
        raise ConfigError(f"backend {backend!r} cannot run it: {what}", f'Use backend="{needed}" or leave backend unset')


def _require_file(p: Path) -> None:
    if not p.is_file():
        raise ModelError(f"no such model file: {p}", "Check the path")


def _chosen(backend: str, what: Any, why: str) -> None:
    log.info("runtime: %s on %s (%s)", backend, what, why)


def _onnxruntime_runner(p: Path, spec, providers, threads, pixels_path: Path | None = None) -> Runner:
    from rescompile.runtime.onnxruntime import OnnxRuntimeRunner

    return OnnxRuntimeRunner(p, spec=spec, providers=providers, threads=threads, pixels_path=pixels_path)


def _openvino_runner(p: Path, spec, providers, threads, pixels_path: Path | None = None) -> Runner:
    if providers:
        log.warning("providers=%s are ONNX Runtime's: OpenVINO runs on its CPU plugin and ignores them", providers)
    from rescompile.runtime.openvino import OpenVINORunner

    return OpenVINORunner(p, spec=spec, threads=threads, pixels_path=pixels_path)


def _checked(manifest: Manifest, relative: str, what: str, verify_files: bool) -> Path:
    """A path the manifest names, resolved inside the bundle and (when listed) sha256-checked."""
    role = manifest.role_of(relative)
    if role is None:
        resolved = manifest.resolve(relative, what)
        if verify_files:
            log.warning("%s (%s) is not listed in the manifest's files: its checksum cannot be verified", relative, what)
        return resolved
    if verify_files:
        verify(manifest, [role])
    return manifest.file(role)


def _load_bundle(manifest: Manifest, backend, providers, threads, verify_files, allow_host_code=None, pixels=None) -> Runner:
    if backend == "torch":
        model = manifest.doc.get("model")
        source = model.get("source") if isinstance(model, dict) else None
        raise ConfigError(
            f"bundle {manifest.dir} holds ONNX and TensorRT files, which the PyTorch runner cannot run",
            'Use backend="onnxruntime", or load the PyTorch model itself' + (f" ({source})" if source else ""),
        )
    engine = manifest.engine
    if backend is None:
        backend, why = _auto_backend(manifest)
    else:
        why = "asked for"
    if backend == "tensorrt":
        if engine is None:
            raise BundleError(
                f"bundle {manifest.dir} has no TensorRT engine",
                f'Build one on the target with `rescompile build --from-bundle {manifest.dir}`, or use backend="onnxruntime"',
            )
        # Before touching the plan file: a mismatch message beats TensorRT's deserialization error.
        check_engine(engine, nvidia.tensorrt_version(), nvidia.find_gpu(), bundle_dir=str(manifest.dir))
        engine_path = _checked(manifest, engine["path"], "engine.path", verify_files)
        _chosen("tensorrt", engine_path, why)
        from rescompile.runtime.tensorrt import TensorRTRunner

        output = (manifest.output or {}).get("name")
        return TensorRTRunner(engine_path, spec=manifest.spec, engine_info=engine, bundle_dir=manifest.dir, output_name=output,
                              check=False, allow_host_code=allow_host_code)
    if backend is None:  # no TensorRT here: the CPU engine the build measured faster, when installed
        table = _dispatch(manifest) if pixels is not True else None
        if table is not None:
            return _split_runner(manifest, table, providers, threads, verify_files, pixels, why)
        backend, cpu_why = _auto_cpu_backend(manifest)
        why = f"{why}; {cpu_why}"
    if backend == "openvino" and not has_module("openvino"):
        raise MissingDependencyError(f"cannot run bundle {manifest.dir} on OpenVINO: openvino is not installed here",
                                     "Install it with: pip install 'rescompile[openvino]', or leave backend unset for ONNX Runtime")
    if backend != "openvino" and not has_module("onnxruntime"):  # say both halves: why not TensorRT, and what runs the CPU artifact
        raise MissingDependencyError(
            f"cannot run bundle {manifest.dir} here: {why}, and ONNX Runtime (for its CPU artifact) is not installed",
            "Install it with: pip install 'rescompile[ort]' (or 'rescompile[openvino]'), or run the bundle where TensorRT and an NVIDIA GPU are",
        )
    if backend == "openvino" and manifest.has(OPENVINO_ROLE) and not pixels:
        if verify_files:
            verify(manifest, [OPENVINO_ROLE])
        onnx_path = manifest.file(OPENVINO_ROLE)
        _chosen(backend, onnx_path, f"{why}; running its OpenVINO INT8 form")
        return _openvino_runner(onnx_path, manifest.spec, providers, threads)
    onnx_path, pixels_path, what = _cpu_artifact(manifest, verify_files, pixels)
    _chosen(backend, onnx_path, f"{why}; running {what}")
    if backend == "openvino":
        return _openvino_runner(onnx_path, manifest.spec, providers, threads, pixels_path)
    return _onnxruntime_runner(onnx_path, manifest.spec, providers, threads, pixels_path)


def _cpu_artifact(manifest: Manifest, verify_files: bool, pixels: bool | None) -> tuple[Path, Path | None, str]:
    """(the CPU artifact, its pixel-input twin when it runs too, what they are in words)."""
    onnx_path, what = _cpu_file(manifest, verify_files)
    pixels_path = None
    if pixels is not False and manifest.has(PIXELS_ROLE) and manifest.has("cpu_int8_onnx") and onnx_path == manifest.file("cpu_int8_onnx"):
        if verify_files:
            verify(manifest, [PIXELS_ROLE])
        pixels_path = manifest.file(PIXELS_ROLE)
        what += f", and {pixels_path.name} for uint8 pixels (classify)"
    elif pixels:
        raise BundleError(f"bundle {manifest.dir} has no pixel-input CPU artifact ({PIXELS_ROLE})",
                          "Rebuild it with this rescompile (its accuracy.json says why one was not written), or pass pixels=None")
    return onnx_path, pixels_path, what


def _dispatch(manifest: Manifest) -> list[list[Any]] | None:
    """From which batch size each CPU engine runs, when the build measured the faster one change with
    the batch size (cpu_artifact.choice: the table is rebuilt from its by_batch) and both engines and
    both files are here; else None."""
    from rescompile.runtime.split import dispatch

    choice = (manifest.cpu_artifact or {}).get("choice")
    by_batch = choice.get("by_batch") if isinstance(choice, dict) else None
    table = dispatch(by_batch) if isinstance(by_batch, dict) else None
    if table is None or not (manifest.has(OPENVINO_ROLE) and has_module("openvino") and has_module("onnxruntime")):
        return None
    return table


def _measured(choice: dict[str, Any]) -> str:
    """What the build measured between the CPU engines, and where when that was another CPU."""
    from rescompile.bench.env import cpu_model

    where = "" if choice.get("cpu") in (None, cpu_model()) else f" (measured on {choice['cpu']}, not this CPU)"
    return f"{choice.get('why') or ''}{where}"


def _split_runner(manifest: Manifest, table: list[list[Any]], providers, threads, verify_files: bool, pixels: bool | None,
                  why: str) -> Runner:
    from rescompile.runtime.split import BatchSplitRunner, describe

    choice = manifest.cpu_artifact["choice"]
    onnx_path, pixels_path, what = _cpu_artifact(manifest, verify_files, pixels)
    if verify_files:
        verify(manifest, [OPENVINO_ROLE])
    ov_path = manifest.file(OPENVINO_ROLE)
    _chosen(describe(table), onnx_path,
            f"{why}; the build measured the faster CPU engine change with the batch size: {_measured(choice)}; "
            f"ONNX Runtime runs {what}, OpenVINO {ov_path.name}")
    return BatchSplitRunner({
        "onnxruntime": lambda: _onnxruntime_runner(onnx_path, manifest.spec, providers, threads, pixels_path),
        "openvino": lambda: _openvino_runner(ov_path, manifest.spec, None, threads),
    }, table)


def _auto_backend(manifest: Manifest) -> tuple[str | None, str]:
    """TensorRT when the bundle's engine can run here, else None (a CPU engine: _auto_cpu_backend)."""
    if manifest.engine is None:
        return None, "the bundle has no TensorRT engine"
    trt_version = nvidia.tensorrt_version()
    if trt_version is None:
        return None, "the bundle has a TensorRT engine, but TensorRT is not installed"
    gpu = nvidia.find_gpu()
    if gpu is None:
        return None, f"the bundle has a TensorRT engine and TensorRT {trt_version} is here, but no NVIDIA GPU"
    return "tensorrt", f"the bundle has a TensorRT engine; TensorRT {trt_version} and {gpu.name} ({gpu.sm}) are here"


def _auto_cpu_backend(manifest: Manifest) -> tuple[str, str]:
    """The CPU engine the build measured faster (manifest cpu_artifact.choice) when it is installed
    here, else the other one; ONNX Runtime when the build measured nothing."""
    artifact = manifest.cpu_artifact or {}
    choice = artifact.get("choice") if isinstance(artifact.get("choice"), dict) else None
    can_openvino = manifest.has(OPENVINO_ROLE) and has_module("openvino")
    if choice is None or choice.get("fastest") not in ("onnxruntime", "openvino"):
        if not has_module("onnxruntime") and can_openvino:
            return "openvino", "ONNX Runtime is not installed, OpenVINO is"
        return "onnxruntime", "the CPU artifact on ONNX Runtime (the build measured no other CPU engine)"
    fastest = choice["fastest"]
    if fastest == "openvino" and can_openvino:
        return "openvino", f"the build measured OpenVINO faster: {_measured(choice)}"
    if fastest == "onnxruntime" and (has_module("onnxruntime") or not can_openvino):
        return "onnxruntime", f"the build measured ONNX Runtime faster or a tie: {_measured(choice)}"
    other = "onnxruntime" if fastest == "openvino" else "openvino"
    return other, f"the build measured {fastest} faster, but it is not installed here"


def _cpu_file(manifest: Manifest, verify_files: bool) -> tuple[Path, str]:
    artifact = manifest.cpu_artifact
    if artifact is not None:
        runtime = artifact.get("runtime", "onnxruntime")
        if runtime != "onnxruntime":
            raise BundleError(f"bundle {manifest.dir}: cpu_artifact is for runtime {runtime!r}, not onnxruntime", "Rebuild the bundle")
        return _checked(manifest, artifact["path"], "cpu_artifact.path", verify_files), f"its CPU artifact ({artifact.get('precision', '?')})"
    for role in CPU_FALLBACK_ROLES:
        if manifest.has(role):
            if verify_files:
                verify(manifest, [role])
            return manifest.file(role), f"its {role} file (the manifest names no cpu_artifact)"
    raise BundleError(
        f"bundle {manifest.dir} has no ONNX model that ONNX Runtime can run (none of {', '.join(CPU_FALLBACK_ROLES)})",
        "Rebuild the bundle with `rescompile build`",
    )


def _load_engine_file(p: Path, verify_files: bool, allow_host_code: bool | None = None) -> Runner:
    _require_file(p)
    spec = engine_info = bundle_dir = output = None
    beside = p.parent / MANIFEST
    if beside.is_file():
        manifest = read_manifest(p.parent)
        engine = manifest.engine
        if engine is not None and _names_file(manifest, engine["path"], p):
            spec, engine_info, bundle_dir = manifest.spec, engine, manifest.dir
            output = (manifest.output or {}).get("name")
            if verify_files and manifest.role_of(engine["path"]) is not None:
                verify(manifest, [manifest.role_of(engine["path"])])
        else:
            log.info("%s does not describe %s: running it without a compatibility check or spec", beside, p.name)
    _chosen("tensorrt", p, "a TensorRT engine file" + (" with its bundle's manifest" if engine_info else ""))
    from rescompile.runtime.tensorrt import TensorRTRunner

    return TensorRTRunner(p, spec=spec, engine_info=engine_info, bundle_dir=bundle_dir, output_name=output,
                          allow_host_code=allow_host_code)


def _names_file(manifest: Manifest, relative: str, p: Path) -> bool:
    try:
        return manifest.resolve(relative, "engine.path") == p.resolve()
    except BundleError:  # the manifest's engine is missing or unsafe: it does not describe p
        return False
