"""What this machine can do with rescompile, and what to install for what is missing."""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import sys
from dataclasses import asdict, dataclass
from typing import Any

from rescompile import nvidia


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch_cuda() -> tuple[str | None, bool, str | None]:
    """(torch version, CUDA usable, the CUDA version torch was built for)."""
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        return None, False, None
    try:
        usable = bool(torch.cuda.is_available())
    except Exception:  # a CUDA build on a machine whose driver is broken
        usable = False
    return torch.__version__, usable, getattr(torch.version, "cuda", None)


def _ort_providers() -> list[str]:
    try:
        return list(importlib.import_module("onnxruntime").get_available_providers())
    except ImportError:
        return []


def _dla_cores() -> int | None:
    from rescompile.nvidia import dla_cores

    return dla_cores()


def checks() -> list[Check]:
    out = [Check("python", sys.version_info >= (3, 10), f"Python {platform.python_version()} on {platform.platform()}", "Use Python 3.10 or newer")]
    torch_version, cuda_ok, torch_cuda = _torch_cuda()
    out.append(Check("torch", torch_version is not None, f"PyTorch {torch_version}" if torch_version else "PyTorch is not installed",
                     "pip install 'rescompile[compile]' (train, export, and the FP32 reference in bench); on a Jetson, NVIDIA's PyTorch build"))
    tv = _version("torchvision")
    out.append(Check("torchvision", tv is not None, f"torchvision {tv}" if tv else "torchvision is not installed",
                     "pip install 'rescompile[vision]' (torchvision ResNets, CIFAR-10)"))
    gpu = nvidia.find_gpu()
    if gpu is None:
        out.append(Check("gpu", False, "no NVIDIA GPU (nvidia-smi finds none, not a Jetson)",
                         "Engines are built and run on an NVIDIA GPU or Jetson; here the CPU INT8 artifact is the deployable"))
    else:
        extra = f", power mode {gpu.power_mode}" if gpu.power_mode else ""
        out.append(Check("gpu", True, f"{gpu.name} ({gpu.sm}), driver {gpu.driver or '-'}, CUDA {gpu.cuda or '-'}{extra}"))
    if torch_version is not None:
        out.append(Check("torch-cuda", cuda_ok, f"PyTorch CUDA {'usable' if cuda_ok else 'not usable'} (built for CUDA {torch_cuda or 'none'})",
                         "" if gpu is None else "Install a PyTorch build that matches the driver's CUDA"))
    trt = nvidia.tensorrt_version()
    major = nvidia.major(trt)
    if trt is None:
        out.append(Check("tensorrt", False, "TensorRT is not installed",
                         "JetPack 6 includes TensorRT 10; elsewhere pip install tensorrt (NVIDIA's index)"))
    else:
        paths = "INT8 from the Q/DQ ONNX (strongly typed)" if (major or 0) >= 11 else "INT8 from the Q/DQ ONNX or the calibration cache; FP16 flag"
        out.append(Check("tensorrt", (major or 0) >= 10, f"TensorRT {trt}: {paths}", "rescompile needs TensorRT 10 or 11"))
        dla = _dla_cores()
        if dla:
            out.append(Check("dla", True, f"{dla} DLA core(s): --dla-core 0..{dla - 1}"))
    pv = _version("polygraphy")
    out.append(Check("polygraphy", pv is not None, f"Polygraphy {pv}" if pv else "Polygraphy is not installed",
                     "pip install 'rescompile[trt]' (builds engines through its TensorRT loaders)"))
    providers = _ort_providers()
    out.append(Check("onnxruntime", bool(providers), f"ONNX Runtime {_version('onnxruntime')}: {', '.join(providers)}" if providers
                     else "ONNX Runtime is not installed", "pip install 'rescompile[ort]' to run the CPU artifact ('rescompile[compile]' to calibrate)"))
    sim = _version("onnxsim")
    out.append(Check("onnxsim", sim is not None, f"onnxsim {sim}" if sim else "onnxsim is not installed (export falls back to shape inference)",
                     "pip install 'rescompile[compile]'"))
    skl = _version("scikit-learn")
    out.append(Check("scikit-learn", skl is not None, f"scikit-learn {skl}" if skl else "scikit-learn is not installed (no bundled digits images)",
                     "pip install 'rescompile[compile]'"))
    return out


def capabilities(found: list[Check]) -> list[tuple[str, str]]:
    """One line per command: what it does on this machine."""
    ok = {c.name: c.ok for c in found}
    gpu, trt, torch = ok.get("gpu", False), ok.get("tensorrt", False), ok.get("torch", False)
    engine = gpu and trt and ok.get("polygraphy", False)
    ort = ok.get("onnxruntime", False)
    compile_ = torch and ort
    no_engine = ", ".join(n for n, c in (("no NVIDIA GPU", not gpu), ("no TensorRT", not trt)) if c)
    if engine:
        build = "builds the TensorRT engine here" + ("" if compile_ else "; from a bundle only (--from-bundle): compiling needs rescompile[compile]")
    elif compile_:
        build = f"no engine here ({no_engine}): writes the complete bundle with the CPU INT8 artifact; build the engine on the target with --from-bundle"
    else:
        build = f"unavailable: compiling needs rescompile[compile], and --from-bundle needs TensorRT and an NVIDIA GPU ({no_engine})"
    reference = "PyTorch FP32" if torch else ("the FP32 TensorRT engine" if engine else "ONNX Runtime FP32")
    measured = [n for n, c in (("ONNX Runtime FP32/INT8 on the CPU", ort), ("TensorRT FP16/INT8 on the GPU", engine)) if c]
    lines = [
        ("train", ("trains on the GPU" if ok.get("torch-cuda") else "trains on the CPU (no CUDA)") if torch else "unavailable: needs PyTorch"),
        ("export", "exports to ONNX" if torch else "unavailable for PyTorch models (needs PyTorch); ONNX files are used as they are"),
        ("calibrate", "calibrates INT8 on the CPU with ONNX Runtime; writes the Q/DQ ONNX, TensorRT cache and CPU INT8 model" if ort
         else "unavailable: needs ONNX Runtime (rescompile[compile])"),
        ("build", build),
        ("bench", f"{' and '.join(measured)} against {reference}" if measured else "unavailable: needs ONNX Runtime or TensorRT"),
        ("predict", "runs TensorRT engines" if engine else ("runs bundles with ONNX Runtime on the CPU" if ort
                                                              else "unavailable: needs ONNX Runtime (rescompile[ort]) or TensorRT")),
    ]
    return lines


def report() -> dict[str, Any]:
    found = checks()
    return {"checks": [asdict(c) for c in found], "commands": dict(capabilities(found))}
