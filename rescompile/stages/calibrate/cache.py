"""TensorRT calibration cache: the text file an INT8 calibrator hands to TensorRT.

Format (see ARCHITECTURE.md): a header ``TRT-<version code>-<algorithm>``, then one line
``<tensor name>: <hex>`` per tensor, hex being the big-endian float32 bit pattern of
scale = amax / 127. Scales are stored as their float32 values, so what is written is
read back bit for bit. TensorRT skips a cache whose version tag differs from its own and
calibrates again without saying so; ``check_cache_for`` turns that into an error.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import struct
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rescompile._io import write_bytes_atomic
from rescompile.errors import RescompileError

ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")
DEFAULT_VERSION = "10.3.0"
DEFAULT_ALGORITHM = "EntropyCalibration2"
MAX_CACHE_BYTES = 64 << 20  # a ResNet cache is kilobytes; anything this big is not a cache

# [0-9] rather than \d: \d matches non-ASCII digits, which int() would then accept.
# Bounded lengths keep int() away from huge digit strings (ValueError past 4300 digits).
# major.minor[.patch[.build]], and a PEP 440 post-release tag: TensorRT 10.7's bindings say "10.7.0.post1".
_VERSION_RE = re.compile(r"([0-9]{1,4})\.([0-9]{1,2})(?:\.([0-9]{1,2})(?:\.[0-9]{1,6})?)?(?:\.?post[0-9]{1,3})?")
_HEADER_RE = re.compile(r"TRT-([0-9]{1,9})-([A-Za-z0-9]+)")
_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_VERSION_HINT = "Use a version like 10.3.0 (TensorRT's major.minor.patch)"


class CacheError(RescompileError):
    """A calibration cache that cannot be written, read, or used with this model or TensorRT."""


def version_code(version: str) -> int:
    """``"8.6.1"`` -> 8601, ``"10.3.0"`` -> 100300: the number TensorRT puts in the header.

    TensorRT changed the encoding at 10.0 (minor versions may exceed 9 since then). A fourth
    component (the build number, as in "8.6.1.6") is accepted and ignored: the tag has none.
    """
    m = _VERSION_RE.fullmatch(version.strip()) if isinstance(version, str) else None
    if m is None:
        raise CacheError(f"not a TensorRT version: {version!r}", _VERSION_HINT)
    major, minor, patch = int(m[1]), int(m[2]), int(m[3] or 0)
    if major >= 10:
        return major * 10000 + minor * 100 + patch
    if major == 0 or minor > 9:  # 8.x codes hold one digit of minor: 8.10 has no code
        raise CacheError(f"not a TensorRT version: {version!r}", _VERSION_HINT)
    return major * 1000 + minor * 100 + patch


def version_from_code(code: int | str) -> str:
    """Inverse of ``version_code``: 8601 -> ``"8.6.1"``, 100300 -> ``"10.3.0"``."""
    if isinstance(code, str) and re.fullmatch(r"[0-9]{1,9}", code):
        code = int(code)
    if isinstance(code, bool) or not isinstance(code, int) or code < 1000 or 10000 <= code < 100000:
        # 10000..99999 would be major 10-99 in the old encoding, which those versions never used.
        raise CacheError(f"not a TensorRT version code: {code!r}", "Expected e.g. 8601 (8.6.1) or 100300 (10.3.0)")
    if code < 10000:
        return f"{code // 1000}.{code // 100 % 10}.{code % 100}"
    return f"{code // 10000}.{code // 100 % 100}.{code % 100}"


def _name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a line of the cache, or None.

    Readers split on the last ": ", so colons and spaces are fine; a line break would split
    the entry, and NUL cannot appear in a TensorRT (C string) tensor name.
    """
    if not isinstance(name, str):
        return f"tensor name {name!r} is not a string"
    if not name:
        return "a tensor name is empty"
    if any(c in name for c in "\n\r\x00"):
        return f"tensor name {name!r} contains a line break or NUL"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"tensor name {name!r} cannot be encoded as UTF-8"
    return None


def _float32(name: str, scale: object) -> float:
    """``scale`` rounded to float32, refused unless finite and > 0 after rounding."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise CacheError(f"tensor {name!r}: scale {scale!r} is not a number", "Scales are amax / 127 (floats)")
    try:
        value = struct.unpack(">f", struct.pack(">f", float(scale)))[0]
    except OverflowError:  # struct refuses finite doubles beyond float32's range
        value = math.inf
    if not (math.isfinite(value) and value > 0):
        raise CacheError(
            f"tensor {name!r}: scale {float(scale)!r} is not a finite float32 > 0",
            "A scale is amax / 127; check the calibration statistics of this tensor",
        )
    return value


@dataclass(frozen=True)
class CalibrationCache:
    """A parsed or to-be-written cache; ``scales`` are float32 values (amax / 127), in file order."""

    version_code: int
    algorithm: str
    scales: dict[str, float]

    def __post_init__(self) -> None:
        # Validate here so that every cache that exists can be written and read back unchanged.
        if isinstance(self.version_code, bool) or not isinstance(self.version_code, int):
            raise CacheError(f"version_code must be an int such as 100300, got {self.version_code!r}")
        version_from_code(self.version_code)
        if self.algorithm not in ALGORITHMS:
            raise CacheError(f"unknown calibration algorithm {self.algorithm!r}", f"Use one of: {', '.join(ALGORITHMS)}")
        if not isinstance(self.scales, Mapping):
            raise CacheError(f"scales must map tensor names to floats, got {type(self.scales).__name__}")
        if not self.scales:
            raise CacheError("the calibration cache has no tensor scales", "Calibrate on at least one batch first")
        for name in self.scales:
            problem = _name_problem(name)
            if problem:
                raise CacheError(problem, "Rename the tensor in the ONNX model")
        object.__setattr__(self, "scales", {n: _float32(n, s) for n, s in self.scales.items()})

    @property
    def version(self) -> str:
        return version_from_code(self.version_code)

    @property
    def header(self) -> str:
        return f"TRT-{self.version_code}-{self.algorithm}"

    def amax(self, name: str) -> float:
        """The clipping threshold of ``name``: scale * 127."""
        if name not in self.scales:
            raise CacheError(f"no tensor {name!r} in the calibration cache", "List the names with cache.scales")
        return self.scales[name] * 127.0

    def to_text(self) -> str:
        lines = [self.header] + [f"{n}: {struct.pack('>f', s).hex()}" for n, s in self.scales.items()]
        return "\n".join(lines) + "\n"


def cache_from_scales(
    scales: Mapping[str, float], *, version: str = DEFAULT_VERSION, algorithm: str = DEFAULT_ALGORITHM
) -> CalibrationCache:
    """A cache for TensorRT ``version`` (dotted) holding ``scales`` (amax / 127 per tensor)."""
    if not isinstance(scales, Mapping):
        raise CacheError(f"scales must map tensor names to floats, got {type(scales).__name__}")
    return CalibrationCache(version_code(version), algorithm, dict(scales))


def write_cache(
    path: str | os.PathLike[str],
    scales: Mapping[str, float],
    *,
    version: str = DEFAULT_VERSION,
    algorithm: str = DEFAULT_ALGORITHM,
) -> Path:
    """Write ``scales`` as a TensorRT calibration cache at ``path``, atomically; return the path."""
    text = cache_from_scales(scales, version=version, algorithm=algorithm).to_text()
    try:
        return write_bytes_atomic(path, text.encode("utf-8"))
    except OSError as exc:
        raise CacheError(f"cannot write calibration cache {path}: {exc.strerror or exc}", "Check the path and its permissions") from exc


def parse_cache(text: str, *, source: str = "cache") -> CalibrationCache:
    """Parse the text of a calibration cache; anything malformed raises CacheError saying where."""
    if not isinstance(text, str):
        raise CacheError(f"{source}: expected text, got {type(text).__name__}", "Use read_cache(path) for files")
    if not text.strip():
        raise CacheError(f"{source} is empty", "Calibrate again to write a new cache")
    # Split on "\n" only: str.splitlines also breaks on \x85, \u2028, ... which names may hold.
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    m = _HEADER_RE.fullmatch(lines[0])
    if m is None:
        raise CacheError(
            f"{source}: first line {lines[0][:60]!r} is not a TensorRT calibration cache header",
            "Expected e.g. TRT-100300-EntropyCalibration2 (a timing cache or engine is not a calibration cache)",
        )
    if m[2] not in ALGORITHMS:
        raise CacheError(f"{source}: unknown calibration algorithm {m[2]!r}", f"Expected one of: {', '.join(ALGORITHMS)}")
    code = int(m[1])
    try:
        version_from_code(code)
    except CacheError as exc:
        raise CacheError(f"{source}: {exc.message}", exc.hint) from None
    scales: dict[str, float] = {}
    unterminated = not text.endswith("\n")
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, digits = line.rpartition(": ")
        problem = _name_problem(name) if sep else f"{line[:60]!r} is not '<tensor name>: <hex>'"
        if not problem and not _HEX_RE.fullmatch(digits):
            problem = f"{digits[:20]!r} is not a hex float32"
        elif not problem and len(digits) > 8:
            problem = f"{digits[:20]!r} has more than 8 hex digits"
        elif not problem and unterminated and number == len(lines) and len(digits) < 8:
            # Short hex is legal, but real scales use 8 digits: a short one on an unterminated
            # last line is almost surely a file cut off while it was copied.
            problem = f"the last line looks truncated ({line[:60]!r})"
        elif not problem and name in scales:
            problem = f"tensor {name!r} appears twice"
        if problem:
            raise CacheError(f"{source}, line {number}: {problem}", "The file is damaged: calibrate again")
        value = struct.unpack(">f", bytes.fromhex(digits.zfill(8)))[0]
        if not (math.isfinite(value) and value > 0):
            raise CacheError(
                f"{source}, line {number}: tensor {name!r} has scale {value!r}; scales must be finite and > 0",
                "The file is damaged: calibrate again",
            )
        scales[name] = value
    if not scales:
        raise CacheError(f"{source} has a header but no tensor scales", "Calibrate again to write a new cache")
    return CalibrationCache(code, m[2], scales)


def read_cache(path: str | os.PathLike[str]) -> CalibrationCache:
    """Read and parse the calibration cache at ``path``."""
    path = Path(path)
    try:
        if not path.is_file():
            raise CacheError(f"no calibration cache at {path}", "Check the path, or calibrate to write one")
        if path.stat().st_size > MAX_CACHE_BYTES:
            raise CacheError(f"{path} is over {MAX_CACHE_BYTES >> 20} MiB: not a calibration cache", "Check the path")
        with open(path, "rb") as fh:
            data = fh.read(MAX_CACHE_BYTES + 1)  # bounded even if the file grew since stat()
    except OSError as exc:
        raise CacheError(f"cannot read calibration cache {path}: {exc.strerror or exc}", "Check its permissions") from exc
    if len(data) > MAX_CACHE_BYTES:
        raise CacheError(f"{path} is over {MAX_CACHE_BYTES >> 20} MiB: not a calibration cache", "Check the path")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CacheError(f"{path} is not UTF-8 text (byte {exc.start})", "Is it an engine or timing cache? Check the path") from exc
    return parse_cache(text, source=str(path))


def check_cache_for(
    cache: CalibrationCache, *, trt_version: str | None = None, tensor_names: Collection[str] | None = None
) -> list[str]:
    """Raise if TensorRT ``trt_version`` or a model with ``tensor_names`` cannot use ``cache``.

    Returns warnings for model tensors the cache has no scale for. None skips a check.
    """
    if trt_version is not None and version_code(trt_version) != cache.version_code:
        wanted = version_from_code(version_code(trt_version))
        raise CacheError(
            f"the calibration cache was written for TensorRT {cache.version}; TensorRT {wanted} skips a cache "
            "whose version tag differs and would silently calibrate again",
            f"Re-write the cache with --trt-version {wanted}",
        )
    if tensor_names is None:
        return []
    if isinstance(tensor_names, str):  # a str is a Collection of characters: surely a mistake
        raise CacheError("tensor_names must be a collection of names, not one string")
    known = set(tensor_names)
    unknown = [n for n in cache.scales if n not in known]
    if unknown:
        shown = ", ".join(repr(n) for n in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise CacheError(
            f"{len(unknown)} tensor(s) in the calibration cache are not in the model: {shown}",
            "The cache belongs to another model or another export of it: calibrate again for this model",
        )
    ordered = list(tensor_names) if isinstance(tensor_names, Sequence) else sorted(known)
    return [
        f"tensor {n!r} has no scale in the calibration cache: TensorRT gets no INT8 scale for it"
        for n in dict.fromkeys(ordered)
        if n not in cache.scales
    ]
