"""Can this machine run a bundle's TensorRT engine? Decided from the manifest, before TensorRT
is asked to deserialize the plan (which fails with an opaque "magic tag does not match" or
"version mismatch" log line, or worse, on a mismatched machine).

The rules, from the TensorRT developer guide, "Advanced Topics" -> "Version Compatibility"
and "Hardware Compatibility" (10.x; "Engine Compatibility" in 11.x), and the support matrix's
"Features for Platforms and Software" notes:

- By default a serialized engine runs only with the TensorRT version that built it, build number
  included (the standard runtime checks the full version stamped in the plan). We compare all four
  parts when both sides know them, major.minor.patch when one side records no build number. An engine built with ``BuilderFlag.VERSION_COMPATIBLE`` runs on the same or a later
  TensorRT of the same major version, and a TensorRT 10 one also on TensorRT 11 (TensorRT 11's
  support matrix), never on an older one.
- By default an engine is not portable across devices: it needs the compute capability it was
  built for. With ``HardwareCompatibilityLevel.AMPERE_PLUS`` it runs on any Ampere or later GPU
  (sm_80+); with ``SAME_COMPUTE_CAPABILITY`` (TensorRT 10.9+) on any GPU of the building GPU's
  compute capability; hardware compatibility is not supported on JetPack or DRIVE OS.
- Serialized engines are not portable across platforms (a Jetson engine never runs on a
  discrete-GPU host and vice versa).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from rescompile.errors import RescompileError
from rescompile.nvidia import GpuInfo

log = logging.getLogger(__name__)

AMPERE_PLUS = "ampere+"
SAME_COMPUTE_CAPABILITY = "same-cc"  # what build writes (HardwareCompat.same_cc)
# The spellings a manifest may carry for each level (older rescompile releases wrote the enum name).
_LEVEL_ALIASES = {None: None, "none": None, AMPERE_PLUS: AMPERE_PLUS, "ampere_plus": AMPERE_PLUS,
                  SAME_COMPUTE_CAPABILITY: SAME_COMPUTE_CAPABILITY, "same_compute_capability": SAME_COMPUTE_CAPABILITY}
HARDWARE_LEVELS = tuple(_LEVEL_ALIASES)
# Version Compatibility: a version-compatible plan built by TensorRT <key> runs on these majors.
VERSION_COMPATIBLE_MAJORS = {10: (10, 11), 11: (11,)}


class RuntimeMismatchError(RescompileError):
    """A TensorRT engine that cannot run on this machine (TensorRT version, GPU, platform)."""


def parse_version(text: Any) -> tuple[int, ...] | None:
    """'10.3.0' -> (10, 3, 0); '10.3.0.26' -> (10, 3, 0, 26) (missing minor/patch as 0); else None."""
    if text is None:
        return None
    match = re.match(r"\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:\.(\d+))?", str(text))
    if not match:
        return None
    parts = tuple(int(part or 0) for part in match.groups()[:3])
    return parts + ((int(match.group(4)),) if match.group(4) is not None else ())


def parse_compute_capability(gpu: dict[str, Any] | GpuInfo | None) -> tuple[int, int] | None:
    """(major, minor) from a GpuInfo or a manifest's gpu dict ('8.7' or 'sm_87'); None if unknown."""
    if gpu is None:
        return None
    cc = gpu.compute_capability if isinstance(gpu, GpuInfo) else gpu.get("compute_capability")
    match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", str(cc)) if cc is not None else None
    if match:
        return int(match.group(1)), int(match.group(2))
    sm = None if isinstance(gpu, GpuInfo) else gpu.get("sm")
    match = re.fullmatch(r"\s*sm_?(\d+)(\d)\s*", str(sm)) if sm is not None else None
    if match:
        return int(match.group(1)), int(match.group(2))
    return None


def _sm(cc: tuple[int, int] | None) -> str:
    return f"sm_{cc[0]}{cc[1]}" if cc else "an unknown GPU"


def _dotted(version: tuple[int, ...] | None, raw: Any) -> str:
    return ".".join(map(str, version)) if version else str(raw or "an unknown version")


def check_engine(
    engine_info: dict[str, Any],
    running_trt: str | None,
    gpu: GpuInfo | None,
    *,
    bundle_dir: str | None = None,
) -> None:
    """Raise RuntimeMismatchError when the engine described by ``engine_info`` (a manifest's
    ``engine`` entry) cannot run with TensorRT ``running_trt`` on ``gpu``; return otherwise."""
    where = bundle_dir or "DIR"
    built_raw = engine_info.get("tensorrt_version")
    built = parse_version(built_raw)
    engine_gpu = engine_info.get("gpu") if isinstance(engine_info.get("gpu"), dict) else None
    built_cc = parse_compute_capability(engine_gpu)
    built_name = (engine_gpu or {}).get("name") or "unknown GPU"
    target = f"TensorRT {_dotted(built, built_raw)} for {_sm(built_cc)} ({built_name})"
    cpu_hint = f'or run the bundle\'s CPU artifact with ONNX Runtime: rescompile.runtime.load("{where}", backend="onnxruntime")'
    rebuild = f"Rebuild it here with `rescompile build --from-bundle {where}`, {cpu_hint}"

    if running_trt is None:
        raise RuntimeMismatchError(
            f"TensorRT is needed to run this engine (built with {target}) and it is not installed on this machine",
            f"Install TensorRT {_dotted(built, built_raw)} on a machine with a matching NVIDIA GPU, {cpu_hint}",
        )
    running = parse_version(running_trt)
    if gpu is None:
        raise RuntimeMismatchError(
            f"engine built with {target}; this machine has TensorRT {_dotted(running, running_trt)} but no NVIDIA GPU",
            f"Run it on a machine with a matching NVIDIA GPU, {cpu_hint}",
        )
    here_cc = parse_compute_capability(gpu)
    here = f"TensorRT {_dotted(running, running_trt)} on {_sm(here_cc)} ({gpu.name})"

    def mismatch(reason: str) -> RuntimeMismatchError:
        return RuntimeMismatchError(f"engine built with {target}; this machine has {here}: {reason}", rebuild)

    _check_version(engine_info, built, running, mismatch)
    _check_hardware(engine_info, engine_gpu, built_cc, here_cc, gpu, mismatch)
    dla = engine_info.get("dla_core")
    if dla is not None and not gpu.jetson:
        raise mismatch(f"the engine runs on DLA core {dla}, and only Jetson/DRIVE modules have DLA cores")
    if engine_gpu and engine_gpu.get("name") and engine_gpu["name"] != gpu.name \
            and _LEVEL_ALIASES.get(engine_info.get("hardware_compatibility")) is None:
        # Same compute capability, different GPU model: TensorRT loads it with a warning, but the
        # tactics were timed on the other model (developer guide: "engines are not portable across devices").
        log.warning("engine was built on %s and runs on %s (same %s): rebuild here for best speed", engine_gpu["name"], gpu.name, _sm(here_cc))


def _check_version(engine_info: dict[str, Any], built, running, mismatch) -> None:
    if built is None:
        log.warning("the manifest does not say which TensorRT built the engine: TensorRT will check it while loading")
        return
    if running is None:
        raise mismatch("this machine's TensorRT version cannot be read")
    if engine_info.get("version_compatible") is True:
        # Version Compatibility: a VERSION_COMPATIBLE plan runs on later TensorRT versions of the
        # same major version (and a TensorRT 10 plan on TensorRT 11), never on an older one.
        majors = VERSION_COMPATIBLE_MAJORS.get(built[0], (built[0],))
        if running[0] not in majors:
            where = " or ".join(f"{m}.x" for m in majors)
            raise mismatch(f"a version-compatible engine built by TensorRT {built[0]} runs only on TensorRT {where}")
        if running[:3] < built[:3]:
            raise mismatch("a version-compatible engine runs only on the TensorRT that built it or a later one")
        return
    if running[:3] != built[:3]:
        raise mismatch("TensorRT runs only engines built by the same version (major.minor.patch)")
    if len(running) > 3 and len(built) > 3 and running[3] != built[3]:
        raise mismatch(f"same release, another build ({'.'.join(map(str, built))} against {'.'.join(map(str, running))}): "
                       "TensorRT's standard runtime refuses a plan stamped with another build number")


def _check_hardware(engine_info, engine_gpu, built_cc, here_cc, gpu: GpuInfo, mismatch) -> None:
    raw = engine_info.get("hardware_compatibility")
    if raw not in _LEVEL_ALIASES:
        raise mismatch(f"the engine's hardware_compatibility {raw!r} is unknown to this rescompile (upgrade it)")
    level = _LEVEL_ALIASES[raw]
    if engine_gpu is not None and isinstance(engine_gpu.get("jetson"), bool) and engine_gpu["jetson"] != gpu.jetson:
        # Support matrix: serialized engines are not portable across platforms.
        kinds = {True: "a Jetson module", False: "a discrete-GPU host"}
        raise mismatch(f"it was built on {kinds[engine_gpu['jetson']]} and this is {kinds[gpu.jetson]}; engines are not portable across platforms")
    if here_cc is None:
        raise mismatch("this GPU's compute capability cannot be read")
    if level == AMPERE_PLUS:
        # Hardware Compatibility: AMPERE_PLUS engines run on any sm_80+ GPU (not on JetPack).
        if here_cc < (8, 0):
            raise mismatch("the engine is hardware-compatible with Ampere and later GPUs (sm_80+) only")
        if gpu.jetson:
            raise mismatch("hardware-compatible engines are not supported on JetPack")
        return
    if gpu.jetson and level is not None:
        raise mismatch("hardware-compatible engines are not supported on JetPack")
    if built_cc is None:
        log.warning("the manifest does not say which GPU the engine was built for: TensorRT will check it while loading")
        return
    if built_cc != here_cc:
        if level == SAME_COMPUTE_CAPABILITY:
            raise mismatch(f"the engine is hardware-compatible with {_sm(built_cc)} GPUs only (same compute capability)")
        raise mismatch("an engine runs only on the compute capability it was built for (unless built hardware-compatible)")
