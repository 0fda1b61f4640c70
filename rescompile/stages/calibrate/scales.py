"""Reading scales.json: the amax of every tensor from an earlier calibration (rescompile's own, or
one written in its format by another tool), so artifacts can be rebuilt without re-calibrating."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from rescompile._io import loads_json
from rescompile.errors import DataError

SCALES_FORMAT = "rescompile.scales"
SUPPORTED_VERSIONS = (1,)
MAX_SCALES_BYTES = 64 << 20  # a ResNet-152 has a few thousand tensors: kilobytes, not megabytes


class ScalesError(DataError):
    """A scales.json that cannot be used."""


def parse_scales(doc: Any, source: str = "scales.json") -> dict[str, float]:
    """The tensor -> amax map of a parsed scales.json document; anything malformed raises ScalesError."""
    if not isinstance(doc, dict):
        raise ScalesError(f"{source} is not a JSON object", "Pass a scales.json written by rescompile calibrate")
    if doc.get("format") != SCALES_FORMAT:
        raise ScalesError(f"{source} is not a rescompile scales file (format {doc.get('format')!r})", "Pass a scales.json written by rescompile calibrate")
    version = doc.get("format_version")
    if isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
        raise ScalesError(f"{source} has format_version {version!r}; this rescompile reads {SUPPORTED_VERSIONS}", "Upgrade rescompile or re-calibrate")
    tensors = doc.get("tensors")
    if not isinstance(tensors, dict) or not tensors:
        raise ScalesError(f"{source} has no 'tensors' object", "Re-calibrate to write a complete scales.json")
    out: dict[str, float] = {}
    for name, entry in tensors.items():
        if not isinstance(name, str) or not name or "\n" in name:
            raise ScalesError(f"{source}: tensor name {name!r} is not a one-line name", "Fix or re-create the file")
        amax = entry.get("amax") if isinstance(entry, dict) else None
        try:
            amax = None if isinstance(amax, bool) or not isinstance(amax, (int, float)) else float(amax)
        except OverflowError:  # an integer beyond float range
            amax = math.inf
        if amax is None or not math.isfinite(amax) or amax <= 0:
            raise ScalesError(f"{source}: tensor {name!r} has amax {amax!r}, not a positive finite number", "Fix or re-create the file")
        out[name] = float(amax)
    return out


def read_scales(path: str | os.PathLike[str]) -> dict[str, float]:
    path = Path(path)
    if not path.is_file():
        raise ScalesError(f"no scales file at {path}", "Pass the scales.json of an earlier calibration")
    size = path.stat().st_size
    if size > MAX_SCALES_BYTES:
        raise ScalesError(f"{path} is {size} bytes, more than a scales file can be ({MAX_SCALES_BYTES})", "Check the path")
    try:
        doc = loads_json(path.read_bytes())
    except (UnicodeDecodeError, ValueError) as exc:  # ValueError: also 4300+ digit numbers
        raise ScalesError(f"{path} is not valid JSON ({exc.__class__.__name__})", "Pass a scales.json written by rescompile calibrate") from exc
    except RecursionError as exc:
        raise ScalesError(f"{path} nests too deeply to be a scales file", "Check the file") from exc
    return parse_scales(doc, str(path))
