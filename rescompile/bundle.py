"""Bundles: one directory holding ``manifest.json`` and the files it names.

A bundle is what ``rescompile build`` leaves behind and what an edge app ships. The manifest
lists every file by role with its sha256 and size, so a copy can be checked before anything
in it is parsed. Reading treats the bundle as untrusted input: the manifest's size is bounded
before it is read, every value is type-checked, and every path it names must resolve to a
regular file inside the bundle directory (no absolute paths, no ``..``, no symlink escapes).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from rescompile._io import expand_user, loads_json
from rescompile.errors import RescompileError
from rescompile.models.spec import ModelSpec

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "rescompile.bundle"
# 1: files, spec, calibration. 2 adds engine, cpu_artifact, input and output.
SUPPORTED_FORMAT_VERSIONS = (1, 2)
# A real manifest is a few KiB; the bound stops a hostile or corrupt file from eating memory.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
_HASH_CHUNK = 1 << 20

FILE_ROLES = (
    "fp32_onnx", "optimized_onnx", "fusion_report", "qdq_onnx", "cpu_int8_onnx", "cpu_int8_pixels_onnx", "openvino_int8_onnx", "calibration_cache", "scales",
    "accuracy", "labels", "engine", "timing_cache", "engine_layers",
)


class BundleError(RescompileError):
    """A bundle directory or manifest that cannot be read or does not match its files."""


# -- reading ------------------------------------------------------------------------------
# Everything below only reads. It uses no writer helper, so the writer can change freely.


@dataclass(frozen=True)
class FileEntry:
    """One ``files`` entry of the manifest: where the file is and what it must hash to."""

    role: str
    path: str  # relative to the bundle directory, as written in the manifest
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """A parsed, type-checked manifest. ``doc`` is the raw JSON object for anything else."""

    dir: Path
    doc: dict[str, Any]
    format_version: int
    spec: ModelSpec
    files: dict[str, FileEntry]
    precision: str | None = None
    engine: dict[str, Any] | None = None
    cpu_artifact: dict[str, Any] | None = None
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def path(self) -> Path:
        return self.dir / MANIFEST

    def has(self, role: str) -> bool:
        return role in self.files

    def file(self, role: str) -> Path:
        """The file with ``role``, resolved safely inside the bundle directory."""
        entry = self.files.get(role)
        if entry is None:
            have = ", ".join(sorted(self.files)) or "none"
            raise BundleError(
                f"bundle {self.dir} has no {role!r} file (it has: {have})",
                "Rebuild the bundle with the stage that writes it",
            )
        return resolve_inside(self.dir, entry.path, f"files.{role}.path")

    def resolve(self, relative: str, what: str = "path") -> Path:
        """Any path named by the manifest (engine.path, cpu_artifact.path), resolved safely."""
        return resolve_inside(self.dir, relative, what)

    def role_of(self, relative: str) -> str | None:
        """The role whose entry names ``relative`` (so its sha256 can be checked), if any."""
        target = PurePosixPath(relative.replace("\\", "/"))
        return next((e.role for e in self.files.values() if PurePosixPath(e.path.replace("\\", "/")) == target), None)


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and check the manifest of the bundle at ``path`` (the directory or its manifest.json)."""
    path = expand_user(path)
    if path.name == MANIFEST and not path.is_dir():
        bundle_dir, manifest_path = path.parent, path
    else:
        bundle_dir, manifest_path = path, path / MANIFEST
    if not bundle_dir.is_dir():
        raise BundleError(f"no bundle directory at {bundle_dir}", "Pass the output directory of `rescompile build`")
    if not manifest_path.is_file():
        raise BundleError(
            f"{bundle_dir} has no {MANIFEST}, so it is not a rescompile bundle",
            "Pass the output directory of `rescompile build`, or rebuild it",
        )
    doc = _load_json(manifest_path)
    return _parse(bundle_dir, doc)


def _load_json(manifest_path: Path) -> dict[str, Any]:
    size = manifest_path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise BundleError(
            f"{manifest_path} is {size} bytes, over the {MAX_MANIFEST_BYTES} byte limit for a manifest",
            "It is not a rescompile manifest: rebuild the bundle",
        )
    with open(manifest_path, "rb") as fh:  # read at most the limit even if the file grows meanwhile
        raw = fh.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{manifest_path} grew past the {MAX_MANIFEST_BYTES} byte limit while being read", "Rebuild the bundle")
    try:
        doc = loads_json(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: also 4300+ digit numbers
        raise BundleError(
            f"{manifest_path} is not valid JSON ({exc.__class__.__name__}: {str(exc)[:120]})",
            "The file is corrupt or truncated: copy the bundle again or rebuild it",
        ) from exc
    if not isinstance(doc, dict):
        raise BundleError(f"{manifest_path} holds a JSON {type(doc).__name__}, not an object", "Rebuild the bundle")
    return doc


def _parse(bundle_dir: Path, doc: dict[str, Any]) -> Manifest:
    where = bundle_dir / MANIFEST
    if doc.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"{where} is not a rescompile bundle manifest (format is {doc.get('format')!r}, expected {BUNDLE_FORMAT!r})",
            "Pass the output directory of `rescompile build`",
        )
    version = doc.get("format_version")
    if not _is_int(version) or version < 1:
        raise BundleError(f"{where} has an invalid format_version {version!r}", "Rebuild the bundle")
    if version > max(SUPPORTED_FORMAT_VERSIONS):
        raise BundleError(
            f"{where} has format_version {version}, newer than this rescompile reads "
            f"(up to {max(SUPPORTED_FORMAT_VERSIONS)})",
            "Upgrade rescompile on this machine, or rebuild the bundle with this version",
        )
    spec_doc = _require(doc, "spec", dict, where)
    try:
        spec = ModelSpec.from_dict(spec_doc)
    except (RescompileError, ArithmeticError, LookupError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"{where} has a malformed spec ({exc})", "Rebuild the bundle") from exc
    files = _parse_files(_require(doc, "files", dict, where), where)
    precision = _optional(doc, "precision", str, where)
    optional = {key: _optional(doc, key, dict, where) for key in ("engine", "cpu_artifact", "input", "output", "calibration")}
    for key in ("engine", "cpu_artifact"):
        if optional[key] is not None:
            _require(optional[key], "path", str, where, f"{key}.")
    for key in ("input", "output"):
        if optional[key] is not None:
            _require(optional[key], "name", str, where, f"{key}.")
            if "shape" in optional[key]:
                _require(optional[key], "shape", list, where, f"{key}.")
    return Manifest(bundle_dir, doc, version, spec, files, precision, **optional)


def _parse_files(raw: dict[str, Any], where: Path) -> dict[str, FileEntry]:
    files = {}
    for role, entry in raw.items():
        if not isinstance(entry, dict):
            raise BundleError(f"{where}: files.{role} has type {type(entry).__name__}, expected dict", "Rebuild the bundle")
        path = _require(entry, "path", str, where, f"files.{role}.")
        digest = _require(entry, "sha256", str, where, f"files.{role}.")
        size = _require(entry, "bytes", int, where, f"files.{role}.")
        if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest):
            raise BundleError(f"{where}: files.{role}.sha256 is not a hex sha256 digest", "Rebuild the bundle")
        if size < 0:
            raise BundleError(f"{where}: files.{role}.bytes is negative ({size})", "Rebuild the bundle")
        files[role] = FileEntry(role, path, digest.lower(), size)
    return files


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_ok(value: Any, kind: type) -> bool:
    return _is_int(value) if kind is int else isinstance(value, kind)


def _require(doc: dict[str, Any], key: str, kind: type, where: Path, prefix: str = "") -> Any:
    if key not in doc:
        raise BundleError(f"{where} lacks the required key {prefix}{key}", "Rebuild the bundle with `rescompile build`")
    value = doc[key]
    if not _type_ok(value, kind):
        raise BundleError(
            f"{where}: {prefix}{key} has type {type(value).__name__}, expected {kind.__name__}",
            "Rebuild the bundle with `rescompile build`",
        )
    return value


def _optional(doc: dict[str, Any], key: str, kind: type, where: Path) -> Any:
    return None if doc.get(key) is None else _require(doc, key, kind, where)


def resolve_inside(bundle_dir: Path, relative: str, what: str = "path") -> Path:
    """``bundle_dir / relative`` as a regular file that really lies inside ``bundle_dir``.

    Refuses absolute paths (POSIX or Windows), ``..`` components, and links whose target is
    outside the directory: a manifest must not make a reader open arbitrary files.
    """
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise BundleError(f"bundle {bundle_dir}: {what} {relative!r} is not a file name", "Rebuild the bundle")
    posix, windows = PurePosixPath(relative), PureWindowsPath(relative)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or windows.root:
        raise BundleError(
            f"bundle {bundle_dir}: {what} {relative!r} is an absolute path; bundle paths must be relative to the bundle",
            "Rebuild the bundle (do not edit manifest paths by hand)",
        )
    if ".." in posix.parts or ".." in windows.parts:
        raise BundleError(
            f"bundle {bundle_dir}: {what} {relative!r} leaves the bundle directory ('..')",
            "Rebuild the bundle (do not edit manifest paths by hand)",
        )
    candidate = bundle_dir / posix
    if not os.path.lexists(candidate):
        raise BundleError(f"bundle {bundle_dir} is missing {relative} ({what})", "Copy the whole bundle directory, or rebuild it")
    base = bundle_dir.resolve()
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # dangling link or a link loop
        raise BundleError(f"bundle {bundle_dir}: {relative} is a broken link ({exc.__class__.__name__})", "Copy the real file into the bundle") from exc
    if not real.is_relative_to(base):
        raise BundleError(
            f"bundle {bundle_dir}: {relative} links to {real}, outside the bundle directory",
            "Copy the real file into the bundle instead of linking to it",
        )
    if not real.is_file():
        raise BundleError(f"bundle {bundle_dir}: {relative} ({what}) is not a regular file", "Rebuild the bundle")
    return real


def file_problems(manifest: Manifest, roles: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """One line per problem with the files of ``roles`` (all roles when None): missing,
    unsafe path, wrong size or wrong sha256. Sizes are checked before any byte is hashed."""
    problems = []
    for role in manifest.files if roles is None else roles:
        entry = manifest.files.get(role)
        if entry is None:
            problems.append(f"no {role!r} file in the manifest")
            continue
        try:
            path = manifest.file(role)
        except BundleError as exc:
            problems.append(str(exc.message))
            continue
        size = path.stat().st_size
        if size != entry.bytes:
            problems.append(f"{entry.path} ({role}) is {size} bytes, the manifest says {entry.bytes}")
            continue
        digest = _sha256(path)
        if digest != entry.sha256:
            problems.append(f"{entry.path} ({role}) has sha256 {digest[:12]}..., the manifest says {entry.sha256[:12]}...")
    return problems


def verify(manifest: Manifest, roles: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Check size and sha256 of the files of ``roles`` (all when None); return the roles checked.

    Raises BundleError naming every mismatch, so a half-copied or edited bundle is never run.
    """
    checked = list(manifest.files if roles is None else roles)
    problems = file_problems(manifest, checked)
    if problems:
        raise BundleError(
            f"bundle {manifest.dir} does not match its manifest: {'; '.join(problems)}",
            "Copy the bundle again or rebuild it",
        )
    return checked


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()
