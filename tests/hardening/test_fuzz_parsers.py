"""Every parser of outside input ends in a RescompileError with one clean line, never another
exception type, a hang or a written file; and what it accepts is correct.

Property-based tests (hypothesis) plus mutation fuzzing that starts from a valid input and damages
it, for: the TensorRT calibration cache, the bundle manifest, scales.json, .npy/.npz arrays,
image folders and ONNX model files. "Correct" means: a parsed cache round-trips through
``to_text()``; a manifest only ever resolves to regular files inside its bundle; a loaded dataset
decodes completely into uint8 batches; a loaded ONNX file is a one-input, one-output CNN.

The ``test_found_*`` tests are regression tests for the library bugs these fuzzers found (each
names the exception it used to leak); the generic fuzzers cover those inputs too.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
import signal
import struct
import time
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from rescompile.bundle import MANIFEST, BundleError, Manifest, read_manifest, resolve_inside, verify
from rescompile.config import DataConfig
from rescompile.data.datasets import load_dataset
from rescompile.data.images import iter_batches
from rescompile.data.preprocess import Preprocessing
from rescompile.errors import DataError, ModelError, RescompileError
from rescompile.stages.calibrate.cache import (
    ALGORITHMS, CacheError, CalibrationCache, cache_from_scales, parse_cache, read_cache,
)
from rescompile.stages.calibrate.scales import ScalesError, parse_scales, read_scales
from tests.runtime.test_bundle import write_manifest

# -- shared machinery ------------------------------------------------------------------------

FUZZ = settings(
    deadline=None,
    derandomize=True,  # the same cases on every run and machine: a CI failure reproduces locally
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # fixtures here are read-only or reset per example
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)


def fuzz(examples: int) -> settings:
    return settings(FUZZ, max_examples=examples)


# RescompileError bounds every message (rescompile.errors.MAX_MESSAGE).
MAX_MESSAGE = 2000
HANG_SECONDS = 20.0  # one parser call on a small input takes milliseconds; this long is a hang


class Hang(Exception):
    """A parser call ran past HANG_SECONDS (raised from a SIGALRM handler)."""


@contextlib.contextmanager
def no_hang(seconds: float = HANG_SECONDS):
    """Raise Hang in the block after ``seconds``; nests (an enclosing shorter limit still holds)."""
    outer, _ = signal.getitimer(signal.ITIMER_REAL)
    if outer and outer <= seconds:  # an enclosing no_hang fires first
        yield
        return

    def fire(_signum, _frame):
        raise Hang(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if outer:  # give the enclosing limit back what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(1e-3, outer - (time.monotonic() - start)))


def check_message(exc: BaseException) -> str:
    """The error is a RescompileError whose text is one non-empty, reasonably short line."""
    assert isinstance(exc, RescompileError), f"{type(exc).__name__}: {exc}"
    text = str(exc)
    assert text.strip(), f"{type(exc).__name__} with an empty message"
    assert len(text.splitlines()) == 1, f"message spans lines: {text!r}"
    assert len(text) <= MAX_MESSAGE, f"message of {len(text)} characters: {text[:200]!r}..."
    return text


def outcome(fn, *args, seconds: float = HANG_SECONDS, **kwargs):
    """``fn(*args)``'s result, or the RescompileError it raised (message checked).

    Any other exception propagates and fails the test with hypothesis' shrunk example.
    """
    try:
        with no_hang(seconds):
            result = fn(*args, **kwargs)
    except RescompileError as exc:
        check_message(exc)
        result = exc
    if currently_in_test_context():  # --hypothesis-show-statistics: how often each outcome came up
        event(f"{getattr(fn, '__name__', 'call')} -> {type(result).__name__}")
    return result


def listing(root: Path) -> list[tuple[str, int]]:
    """Every entry under ``root`` with its size: parsers must not create, remove or change files."""
    return sorted(
        (str(p.relative_to(root)), 0 if p.is_symlink() or not p.is_file() else p.stat().st_size)
        for p in root.rglob("*")
    )


def bug(raises, reason: str):
    """Documents a library bug the fuzzers found (it used to leak ``raises``); the test is a regression test."""

    def mark(fn):
        fn.__doc__ = f"Regression: {reason} (used to leak {getattr(raises, '__name__', raises)})."
        return fn

    return mark


def splice(draw, text, pieces):
    """Insert one of ``pieces`` (or short random text) at a random position of ``text``."""
    at = draw(st.integers(0, len(text)))
    piece = draw(st.one_of(st.sampled_from(pieces), st.text(max_size=3)))
    return text[:at] + piece + text[at:]


# -- 1. TensorRT calibration cache -----------------------------------------------------------

_cache_names = st.text(st.characters(codec="utf-8", exclude_characters="\n\r\x00"), min_size=1, max_size=10)
_scales32 = st.floats(min_value=0.0, exclude_min=True, allow_infinity=False, allow_nan=False, width=32)
valid_cache_texts = st.builds(
    lambda scales, version, algorithm: cache_from_scales(scales, version=version, algorithm=algorithm).to_text(),
    st.dictionaries(_cache_names, _scales32, min_size=1, max_size=6),
    st.sampled_from(["8.6.1", "10.3.0", "10.14.1"]),
    st.sampled_from(ALGORITHMS),
)
_CACHE_PIECES = [
    "\n", "\r", "\r\n", ":", ": ", " ", "\t", "\x00", "\ufeff", "\u2028", "\x85", "\x0b", "é", "卷", "\ud800", "\U0001f600",
    "0", "f", "F", "g", "-", "x", "TRT-", "TRT-8601-EntropyCalibration2", "7f800000", "7fc00000", "ff800000",
    "80000000", "00000000", "00000001", "3f800000", "١٢", "０",
]  # fmt: skip


@st.composite
def cache_mutation(draw, text):
    lines = text.split("\n")
    op = draw(st.sampled_from(
        ["insert", "delete", "replace", "dup_line", "drop_line", "swap_lines", "truncate", "crlf", "hex", "header",
         "unicode_line", "strip_newline", "case"]
    ))  # fmt: skip
    at = draw(st.integers(0, max(0, len(text) - 1)))
    if op == "insert":
        return splice(draw, text, _CACHE_PIECES)
    if op == "delete":
        return text[:at] + text[at + draw(st.integers(1, 4)):]
    if op == "replace":
        return text[:at] + draw(st.one_of(st.sampled_from(_CACHE_PIECES), st.characters())) + text[at + 1:]
    if op == "dup_line":
        i = draw(st.integers(0, len(lines) - 1))
        return "\n".join(lines[: i + 1] + [lines[i]] + lines[i + 1:])
    if op == "drop_line":
        i = draw(st.integers(0, len(lines) - 1))
        return "\n".join(lines[:i] + lines[i + 1:])
    if op == "swap_lines":
        i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines)
    if op == "truncate":
        return text[:at]
    if op == "crlf":
        return text.replace("\n", draw(st.sampled_from(["\r\n", "\r", "\n\n", "\r\r\n", "\n\r"])))
    if op == "hex":  # hex of every length, including none, odd and too many digits
        i = draw(st.integers(1, max(1, len(lines) - 1))) if len(lines) > 1 else 0
        name = lines[i].rpartition(": ")[0] or "t"
        digits = draw(st.text("0123456789abcdefABCDEF", max_size=12))
        lines[i] = f"{name}: {digits}"
        return "\n".join(lines)
    if op == "header":
        code = draw(st.one_of(st.integers(0, 10**10).map(str), st.sampled_from(["8601", "100300", "0008601", "", "x"])))
        algo = draw(st.one_of(st.sampled_from(ALGORITHMS), st.text("abcEMx2", max_size=12)))
        lines[0] = f"TRT-{code}-{algo}"
        return "\n".join(lines)
    if op == "unicode_line":
        i = draw(st.integers(0, len(lines)))
        lines.insert(i, draw(st.text(max_size=20)))
        return "\n".join(lines)
    if op == "strip_newline":
        return text.rstrip("\n")
    return text.upper() if draw(st.booleans()) else text.lower()


@st.composite
def mutated_cache_texts(draw):
    text = draw(valid_cache_texts)
    for _ in range(draw(st.integers(1, 4))):
        text = draw(cache_mutation(text))
    return text


def bits(x: float) -> int:
    return struct.unpack(">I", struct.pack(">f", x))[0]


def check_cache(result, text: str | None = None) -> None:
    """A parsed cache must be valid, round-trip bit-exactly, and come from the text."""
    if isinstance(result, RescompileError):
        assert isinstance(result, CacheError)
        return
    assert isinstance(result, CalibrationCache)
    again = parse_cache(result.to_text())
    assert again == result and list(again.scales) == list(result.scales)
    assert [bits(v) for v in again.scales.values()] == [bits(v) for v in result.scales.values()]
    for name, scale in result.scales.items():
        assert math.isfinite(scale) and scale > 0 and bits(scale) == bits(float(np.float32(scale)))
        assert text is None or f"{name}: " in text


@fuzz(700)
@given(mutated_cache_texts())
def test_mutated_cache_text_parses_correctly_or_is_a_cache_error(text):
    check_cache(outcome(parse_cache, text), text)


@fuzz(150)
@given(text=mutated_cache_texts(), damage=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=3),
       encoding=st.sampled_from(["utf-8", "utf-16", "latin-1", "utf-8-sig"]))  # fmt: skip
def test_mutated_cache_file_reads_correctly_or_is_a_cache_error(tmp_path, text, damage, encoding):
    data = bytearray(text.encode(encoding, "replace"))
    for at, value in damage:  # raw bytes: invalid UTF-8 and stray control bytes
        if data:
            data[at % len(data)] = value
    path = tmp_path / "fuzz.cache"
    path.write_bytes(bytes(data))
    check_cache(outcome(read_cache, path))


def test_odd_cache_texts_and_paths(tmp_path):
    for text in ["TRT-8601-EntropyCalibration2\n" + "x: 3f800000\n" * 2, "\ufeffTRT-8601-EntropyCalibration2\nx: 3f800000\n",
                 "TRT-8601-EntropyCalibration2\r\nx: 3f800000\r\n", "TRT-8601-EntropyCalibration2\nx: 3f800000" + "0" * 10_000,
                 "TRT-8601-EntropyCalibration2\n" + ":" * 10_000 + ": 1\n", "TRT-" + "9" * 10_000 + "-MinMaxCalibration\n"]:  # fmt: skip
        check_cache(outcome(parse_cache, text), text)
    for path in [tmp_path, tmp_path / "missing", tmp_path / "a\x00b", Path("/dev/null"), Path("/proc/self/status")]:
        check_cache(outcome(read_cache, path))


# -- 2. bundle manifest ----------------------------------------------------------------------

OUTSIDE_TEXT = b"secret outside the bundle\n"


def make_bundle(root: Path) -> tuple[Path, dict]:
    """A valid v2 bundle (files, nested file, engine, cpu_artifact) beside an 'outside' folder,
    with links the manifest may be pointed at: out of the bundle, in it, dangling, a loop."""
    outside = root / "outside"
    outside.mkdir(parents=True)
    (outside / "secret.txt").write_bytes(OUTSIDE_TEXT)
    b = root / "bundle"
    (b / "sub").mkdir(parents=True)
    (b / "a_dir").mkdir()
    (b / "model_fp32.onnx").write_bytes(b"fp32 model bytes" * 50)
    (b / "scales.json").write_text('{"input": 0.1}')
    (b / "calibration.cache").write_text("TRT-100300-EntropyCalibration2\ninput: 3c010a14\n")
    (b / "sub" / "model.engine").write_bytes(b"engine" * 7)
    os.symlink(outside / "secret.txt", b / "out_link")  # absolute target outside
    os.symlink("../outside", b / "out_dir")  # relative target outside
    os.symlink("model_fp32.onnx", b / "in_link")  # inside: allowed
    os.symlink("nowhere", b / "dangling")
    os.symlink("loop", b / "loop")
    os.mkfifo(b / "fifo")  # reading it would block forever: must never be opened
    files = {"fp32_onnx": "model_fp32.onnx", "scales": "scales.json", "calibration_cache": "calibration.cache",
             "engine": "sub/model.engine"}  # fmt: skip
    doc = write_manifest(b, files, engine={"path": "sub/model.engine", "tensorrt_version": "10.3.0"},
                         cpu_artifact={"path": "model_fp32.onnx"})  # fmt: skip
    return b, doc


@pytest.fixture
def bundle(tmp_path):
    return make_bundle(tmp_path)


PATH_INJECTIONS = [
    "../x", "../outside/secret.txt", "/etc/passwd", "C:\\x", "C:x", "c:/x", "\\\\server\\share\\x", "//server/x", "\\x",
    "a/../../b", "sub/../../outside/secret.txt", "..\\outside\\secret.txt", "a\\..\\..\\b", "..", "./..", "sub/..",
    "", ".", "./", "/", "//", "\\", "sub", "sub/", "a_dir", "x" * 300, "d/" * 3000 + "f", "\x00", "a\x00b", "scales.json\x00",
    "out_link", "out_dir/secret.txt", "out_dir", "dangling", "loop", "loop/x", "fifo", "~/x", "$HOME/x", "%USERPROFILE%",
    "\ud800", "\udcff", "scales.json\n", " scales.json", "scales.json/", "file:///etc/passwd", "/proc/self/environ",
    "in_link", "sub/./model.engine", "./scales.json", "sub\\model.engine", "manifest.json",
]  # fmt: skip
# Names for files inside the bundle (links included): resolving them is allowed.
SAFE_ALIASES = {"in_link", "sub/./model.engine", "./scales.json", "scales.json/", "manifest.json"}
UNSAFE_PATHS = [p for p in PATH_INJECTIONS if p not in SAFE_ALIASES]
# Over 4300 digits: Python's json refuses it with a plain ValueError.
HUGE_INT_TEXT = "1" * 5000
# An integer no float can hold.
NO_FLOAT_INT_TEXT = "1" * 400
# Raw JSON text put where a value was (json.dumps cannot write these).
RAW_VALUES = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "-0", NO_FLOAT_INT_TEXT, HUGE_INT_TEXT, '"\\ud800"', '"\\u0000"',
              "[" * 50 + "]" * 50, '{"a": ' * 50 + "1" + "}" * 50, "[" * 5000 + "]" * 5000]  # fmt: skip
OTHER_VALUES = [None, True, False, 0, 1, -1, 2, 3, 1.5, -0.0, 2**63, 2**64, -(2**63) - 1, 10**30, "", "x", "2", "rescompile.bundle",
                [], [1], ["batch", 3, 32, 32], {}, {"path": "scales.json"}, "a" * 5000, "0" * 64, "F" * 64,
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]  # fmt: skip


def locations(node, trail=()):
    """Every (container, key) pair of a JSON document, with its key path."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield node, key, trail + (key,)
        yield from locations(value, trail + (key,))


@st.composite
def mutated_documents(draw, base: dict, path_keys=("path",), raw_values=None):
    """``base`` with 1-3 edits: a key deleted or renamed, or a value swapped for another type,
    an injected path, raw JSON text (NaN, huge numbers, deep nesting). Returns JSON text."""
    doc = copy.deepcopy(base)
    raw: dict[str, str] = {}
    for _ in range(draw(st.integers(1, 3))):
        spots = list(locations(doc))
        paths = [s for s in spots if s[1] in path_keys]
        container, key, _ = draw(st.sampled_from(paths if paths and draw(st.booleans()) else spots))
        op = draw(st.sampled_from(["delete", "value", "path", "raw", "rename", "wrap"]))
        if op == "delete" and isinstance(container, dict):
            del container[key]
        elif op == "rename" and isinstance(container, dict):
            container[draw(st.sampled_from(["", "Path", "files", "spec", key + " ", "\x00"]))] = container.pop(key)
        elif op == "path":
            container[key] = draw(st.sampled_from(PATH_INJECTIONS))
        elif op == "raw":
            marker = f"@@raw{len(raw)}@@"
            raw[marker] = draw(st.sampled_from(raw_values or RAW_VALUES))
            container[key] = marker
        elif op == "wrap":
            container[key] = draw(st.sampled_from([[container[key]], {"value": container[key]}]))
        else:
            container[key] = draw(st.one_of(st.sampled_from(OTHER_VALUES), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8)))
    text = json.dumps(doc)
    for marker, value in raw.items():
        text = text.replace(json.dumps(marker), value)
    return text


def check_inside(path, bundle_dir: Path) -> None:
    """Whatever a manifest resolves to is a regular file really inside the bundle."""
    if isinstance(path, RescompileError):
        assert isinstance(path, BundleError)
        return
    assert isinstance(path, Path) and path.is_absolute()
    base = bundle_dir.resolve()
    assert path == path.resolve() and path.is_relative_to(base), f"{path} is outside {base}"
    assert path.is_file() and not path.is_symlink()
    assert path.read_bytes() != OUTSIDE_TEXT


def exercise_manifest(bundle_dir: Path) -> Manifest | RescompileError:
    """read_manifest, then every file role, engine/cpu_artifact paths and verify(); check all."""
    before = listing(bundle_dir.parent)
    m = outcome(read_manifest, bundle_dir)
    if isinstance(m, Manifest):
        assert m.dir == bundle_dir and isinstance(m.format_version, int) and m.format_version in (1, 2)
        for role in list(m.files):
            check_inside(outcome(m.file, role), bundle_dir)
            assert m.role_of(m.files[role].path) is not None
        for section in (m.engine, m.cpu_artifact):
            if section is not None:
                check_inside(outcome(m.resolve, section["path"]), bundle_dir)
        checked = outcome(verify, m)
        if not isinstance(checked, RescompileError):
            assert checked == list(m.files)
            for role, entry in m.files.items():  # success means every file really matched
                assert m.file(role).stat().st_size == entry.bytes
        assert len(m.spec.input_shape) == 3  # the parsed spec is usable
    else:
        assert isinstance(m, BundleError)
    assert listing(bundle_dir.parent) == before, "reading a bundle changed files"
    return m


def test_valid_bundle_reads_and_verifies(bundle):
    b, _ = bundle
    m = exercise_manifest(b)
    assert isinstance(m, Manifest) and set(m.files) == {"fp32_onnx", "scales", "calibration_cache", "engine"}
    assert m.resolve("in_link") == (b / "model_fp32.onnx").resolve()


@fuzz(500)
@given(data=st.data())
def test_mutated_manifest_json_is_safe(bundle, data):
    b, doc = bundle
    (b / MANIFEST).write_text(data.draw(mutated_documents(doc)))
    exercise_manifest(b)


def _byte_damage(draw, raw: bytes) -> bytes:
    op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "random", "utf16", "bom", "nul"]))
    at = draw(st.integers(0, max(0, len(raw) - 1)))
    if not raw:
        return draw(st.binary(max_size=8))
    if op == "flip":
        return raw[:at] + bytes([raw[at] ^ (1 << draw(st.integers(0, 7)))]) + raw[at + 1:]
    if op == "insert":
        return raw[:at] + draw(st.binary(min_size=1, max_size=4)) + raw[at:]
    if op == "delete":
        return raw[:at] + raw[at + draw(st.integers(1, 8)):]
    if op == "truncate":
        return raw[:at]
    if op == "random":
        return draw(st.binary(max_size=300))
    if op == "utf16":
        return raw.decode("utf-8", "replace").encode("utf-16")
    if op == "bom":
        return b"\xef\xbb\xbf" + raw
    return raw.replace(b'"', b'"\x00', 1)


@fuzz(250)
@given(data=st.data())
def test_damaged_manifest_bytes_are_safe(bundle, data):
    b, doc = bundle
    raw = json.dumps(doc, indent=data.draw(st.sampled_from([None, 2]))).encode()
    for _ in range(data.draw(st.integers(1, 3))):
        raw = _byte_damage(data.draw, raw)
    (b / MANIFEST).write_bytes(raw)
    exercise_manifest(b)


@pytest.mark.parametrize("where", ["files.scales.path", "engine.path", "cpu_artifact.path"])
def test_unsafe_manifest_paths_are_refused(bundle, where):
    b, doc = bundle
    for path in UNSAFE_PATHS:
        edited = copy.deepcopy(doc)
        section, *rest = where.split(".")
        target = edited[section]
        for key in rest[:-1]:
            target = target[key]
        target[rest[-1]] = path
        (b / MANIFEST).write_text(json.dumps(edited))
        m = exercise_manifest(b)
        if isinstance(m, Manifest):  # the manifest parses (paths are strings); resolving must refuse
            with no_hang(), pytest.raises(BundleError) as info:
                m.file("scales") if section == "files" else m.resolve(path, where)
            check_message(info.value)
    for path in UNSAFE_PATHS:
        with pytest.raises(BundleError):
            resolve_inside(b, path)


@pytest.mark.parametrize("where", ["format", "format_version", "spec", "spec.arch", "spec.preprocessing", "spec.preprocessing.mean",
                                   "spec.labels", "spec.options", "files", "files.scales", "files.scales.path", "files.scales.bytes",
                                   "precision", "engine", "input.shape", "calibration"])  # fmt: skip
def test_deeply_nested_manifest_values(bundle, where):
    """Nesting around the depth where the reader gives up, at every key: a value it still builds
    must not make repr() or str() of it overflow the stack later. The reader's own depth limit
    decides where that is, the same on every Python version (json's own limit is not)."""
    b, doc = bundle
    marker = "@@deep@@"
    edited = copy.deepcopy(doc)
    *parents, last = where.split(".")
    target = edited
    for key in parents:
        target = target[key]
    target[last] = marker
    template = json.dumps(edited)

    def read_at(depth: int):
        (b / MANIFEST).write_text(template.replace(json.dumps(marker), "[" * depth + "]" * depth))
        return exercise_manifest(b)  # checks the outcome, whatever it is

    def json_gave_up(depth: int) -> bool:
        result = read_at(depth)
        return isinstance(result, BundleError) and "not valid JSON" in str(result)

    lo, hi = 1, 4096  # bisect for the deepest value json still builds here: the riskiest one
    assert not json_gave_up(lo) and json_gave_up(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if json_gave_up(mid) else (mid, hi)
    for depth in (lo - 2, lo - 1, lo, hi, 100_000):
        read_at(depth)


def test_wrong_sizes_and_digests_are_refused(bundle):
    b, doc = bundle
    for field, value in [("bytes", 0), ("bytes", 799), ("bytes", 801), ("bytes", 2**70), ("sha256", "0" * 64),
                         ("sha256", doc["files"]["scales"]["sha256"])]:  # fmt: skip
        edited = copy.deepcopy(doc)
        edited["files"]["fp32_onnx"][field] = value
        (b / MANIFEST).write_text(json.dumps(edited))
        m = read_manifest(b)
        with pytest.raises(BundleError, match="model_fp32.onnx"):
            verify(m)
    edited = copy.deepcopy(doc)
    edited["files"]["fp32_onnx"]["sha256"] = edited["files"]["fp32_onnx"]["sha256"].upper()  # case is not a mismatch
    (b / MANIFEST).write_text(json.dumps(edited))
    assert verify(read_manifest(b)) == list(edited["files"])


def test_manifest_paths_that_are_not_bundles(tmp_path, bundle):
    b, _ = bundle
    (tmp_path / "manifest.json").mkdir(exist_ok=True)
    for path in [tmp_path / "missing", b / "scales.json", b / "fifo", tmp_path / "manifest.json", b / "a_dir", "a\x00b"]:
        m = outcome(read_manifest, path)
        assert isinstance(m, BundleError), path


# -- 3. scales.json --------------------------------------------------------------------------

VALID_SCALES = {
    "format": "rescompile.scales",
    "format_version": 1,
    "provenance": {"rescompile_version": "0.1.0", "images": 512},
    "cpu_reduce_range": False,
    "float_layers": [],
    "tensors": {
        "input": {"amax": 2.5, "scale": 2.5 / 127, "min": -2.5, "max": 2.4},
        "/conv1/Conv_output_0": {"amax": 7.25, "scale": 7.25 / 127},
        "onnx::Add_12: odd name": {"amax": 1e-3},
    },
}


def check_scales(result) -> None:
    if isinstance(result, RescompileError):
        assert isinstance(result, ScalesError)
        return
    assert isinstance(result, dict) and result
    for name, amax in result.items():
        assert isinstance(name, str) and name and "\n" not in name
        assert type(amax) is float and math.isfinite(amax) and amax > 0


def test_valid_scales_round_trip(tmp_path):
    path = tmp_path / "scales.json"
    path.write_text(json.dumps(VALID_SCALES))
    assert read_scales(path) == {k: v["amax"] for k, v in VALID_SCALES["tensors"].items()}


@fuzz(400)
@given(data=st.data())
def test_mutated_scales_documents_are_safe(tmp_path, data):
    text = data.draw(mutated_documents(VALID_SCALES, path_keys=("amax",), raw_values=[v for v in RAW_VALUES if v != NO_FLOAT_INT_TEXT]))
    if _json_ok(text):
        check_scales(outcome(parse_scales, json.loads(text)))
    path = tmp_path / "scales.json"
    path.write_text(text)
    check_scales(outcome(read_scales, path))


def _json_ok(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**1500), 2**1500) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@fuzz(300)
@given(doc=st.one_of(
    _json_values,
    st.fixed_dictionaries({"format": st.just("rescompile.scales"), "format_version": st.sampled_from([1, 1.0, True, "1", 2, None]),
                           "tensors": st.one_of(_json_values, st.dictionaries(st.text(max_size=5),
                                                st.one_of(_json_values, st.fixed_dictionaries({"amax": _json_values})), max_size=4))}),
))  # fmt: skip
def test_any_scales_document_is_safe(doc):
    check_scales(outcome(parse_scales, doc))


@fuzz(150)
@given(data=st.data())
def test_damaged_scales_bytes_are_safe(tmp_path, data):
    raw = json.dumps(VALID_SCALES).encode()
    for _ in range(data.draw(st.integers(1, 3))):
        raw = _byte_damage(data.draw, raw)
    assume(HUGE_INT_TEXT.encode() not in raw)
    path = tmp_path / "scales.json"
    path.write_bytes(raw)
    check_scales(outcome(read_scales, path))


def test_scales_paths_and_deep_nesting(tmp_path):
    for path in [tmp_path, tmp_path / "missing", tmp_path / "a\x00b", Path("/dev/null")]:
        check_scales(outcome(read_scales, path))
    path = tmp_path / "deep.json"
    for depth in [*range(850, 1050, 3), 100_000]:
        for text in ['{"format": %s}', '{"format": "rescompile.scales", "format_version": %s}',
                     '{"format": "rescompile.scales", "format_version": 1, "tensors": {"t": {"amax": %s}}}']:  # fmt: skip
            path.write_text(text % ("[" * depth + "]" * depth))
            check_scales(outcome(read_scales, path))


# -- 4. datasets: .npy / .npz arrays ---------------------------------------------------------


def iterate_fully(splits) -> int:
    """Decode every image of every split through the loader's and the default preprocessing."""
    seen = 0
    for part in (splits.train, splits.val, splits.test):
        for prep in {splits.preprocessing, Preprocessing()}:
            for x, y in iter_batches(part, prep, 4):
                assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1] == 3 and np.isfinite(x).all()
                assert y is None or (y.dtype == np.int64 and len(y) == len(x) and (y >= 0).all())
                seen += len(x) if prep is splits.preprocessing else 0
    return seen


def check_dataset(path: Path):
    """load_dataset, then decode everything: DataError or a complete, consistent dataset."""
    before = listing(path.parent)
    splits = outcome(load_dataset, DataConfig(str(path)))
    if isinstance(splits, RescompileError):
        assert isinstance(splits, DataError)
    else:
        total = len(splits.train) + len(splits.val) + len(splits.test)
        decoded = outcome(iterate_fully, splits)
        if not isinstance(decoded, RescompileError):
            assert decoded == total > 0
        assert splits.num_classes == len(splits.classes)
        for part in (splits.train, splits.val, splits.test):
            assert part.labels is None or len(part.labels) == len(part)
    assert listing(path.parent) == before, "loading a dataset changed files"
    return splits


_DTYPES = ["uint8", "float16", "float32", "float64", "bool", "complex64", "int8", "int64", "uint16", "<U2", "V3",
           "datetime64[s]", ">f4", [("r", "u1"), ("g", "u1")]]  # fmt: skip
_shapes = st.lists(st.integers(0, 5), min_size=0, max_size=5).map(tuple)


@st.composite
def arrays(draw, dtypes=_DTYPES, shapes=_shapes):
    # Half the time a dtype images really come in, so that loading gets past the dtype check.
    dtype = np.dtype(draw(st.one_of(st.sampled_from(["uint8", "float32"]), st.sampled_from(dtypes))))
    shape = draw(shapes)
    n = int(np.prod(shape, dtype=np.int64))
    raw = np.frombuffer(draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize)), dtype=np.uint8)
    if dtype.kind == "f":  # in-range pixels, sometimes with one NaN/inf/out-of-range value
        values = draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))
        if values and draw(st.booleans()):
            values[draw(st.integers(0, n - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, -0.0, 1.0000001, 255.0, -1e-9]))
        return np.asarray(values, dtype=np.float64).astype(dtype).reshape(shape)
    if dtype.kind == "U":
        return np.asarray(draw(st.lists(st.text(max_size=2), min_size=n, max_size=n)), dtype=dtype).reshape(shape)
    if dtype.kind == "M":
        return (raw.view(np.int64) % 10**9).astype(dtype).reshape(shape)
    return raw.view(dtype).reshape(shape) if dtype.itemsize else np.zeros(shape, dtype)


# Image shapes that are images more often than not: (N, H, W[, C]) / (N, C, H, W) with C in 1, 3.
_image_shapes = st.one_of(
    st.tuples(st.integers(0, 5), st.integers(0, 6), st.integers(0, 6), st.sampled_from([1, 3, 4])),
    st.tuples(st.integers(0, 5), st.sampled_from([1, 3]), st.integers(0, 6), st.integers(0, 6)),
    st.tuples(st.integers(0, 5), st.integers(0, 6), st.integers(0, 6)),
    _shapes,
)
# Labels: mostly small, sometimes huge or not a number; mostly one per image.
_label_values = st.one_of(st.integers(0, 3), st.integers(-2, 12), st.just(float("nan")), st.just(2**40), st.just(1.5))


@fuzz(200)
@given(images=arrays(shapes=_image_shapes), data=st.data(), key=st.sampled_from(["images", "images", "x", "data", "pixels"]),
       kind=st.sampled_from(["npy", "npz"]))  # fmt: skip
def test_random_arrays_load_fully_or_are_a_data_error(tmp_path, images, data, key, kind):
    path = tmp_path / f"d.{kind}"
    if kind == "npy":
        np.save(path, images, allow_pickle=False)
    else:
        content = {key: images}
        if data.draw(st.booleans()):
            n = len(images) if images.ndim and data.draw(st.integers(0, 3)) else data.draw(st.integers(0, 7))
            values = data.draw(st.lists(_label_values, min_size=n, max_size=n))
            dtype = data.draw(st.sampled_from(["int64", "int8", "uint8", "float32", "bool", "int32"]))
            with np.errstate(all="ignore"):
                content[data.draw(st.sampled_from(["labels", "y", "targets"]))] = np.asarray(values, dtype=np.float64).astype(dtype)
        if data.draw(st.booleans()):
            content["classes"] = np.asarray(data.draw(st.lists(st.text(max_size=3), max_size=4)), dtype=str)
        np.savez(path, **content)
    check_dataset(path)


class Tripwire:
    """Unpickling this creates ``marker``: proof that a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickled_npy_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    np.save(tmp_path / "evil.npy", np.array([Tripwire(marker)] * 2, dtype=object), allow_pickle=True)
    assert isinstance(check_dataset(tmp_path / "evil.npy"), DataError)
    assert not marker.exists()


def npy_header(shape, descr="<f8", data=b"\x00" * 64) -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode("latin1")
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


@pytest.mark.parametrize("shape", [(3,), (10**6, 32, 32, 3), (2, 2**31, 2**31), (-1, 3)])  # (2**40,): a known bug
def test_npy_header_declaring_more_data_than_the_file_has(tmp_path, shape):
    """A header may declare any size; the file holds 64 bytes. Must not allocate it all."""
    path = tmp_path / "big.npy"
    path.write_bytes(npy_header(shape))
    assert isinstance(check_dataset(path), DataError)


@fuzz(150)
@given(data=st.data())
def test_damaged_npy_bytes_are_safe(tmp_path, data):
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).integers(0, 256, (4, 6, 6, 3), dtype=np.uint8))
    raw = buf.getvalue()
    for _ in range(data.draw(st.integers(1, 3))):
        raw = _byte_damage(data.draw, raw)
    path = tmp_path / "d.npy"
    path.write_bytes(raw)
    check_dataset(path)


# -- 4b. datasets: image folders --------------------------------------------------------------


def png_bytes(size=(6, 5), mode="RGB", fmt="PNG", seed=0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(pixels).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def zero_size_png() -> bytes:
    """A PNG whose header says 0 x 0 pixels (valid chunk CRCs)."""
    ihdr = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b"")


def undecodable_png() -> bytes:
    """A PNG whose chunks and CRCs are all valid (Pillow's verify() passes) but whose pixel data
    is not zlib: it only fails when decoded."""
    ihdr = struct.pack(">IIBBBBB", 6, 5, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"not zlib data") + png_chunk(b"IEND", b"")


GOOD_FILES = {
    "rgb.png": lambda: png_bytes(),
    "gray.png": lambda: png_bytes(mode="L"),
    "rgba.png": lambda: png_bytes(mode="RGBA"),
    "palette.gif": lambda: png_bytes(mode="P", fmt="GIF"),
    "bits.bmp": lambda: png_bytes(mode="1", fmt="BMP"),
    "photo.JPG": lambda: png_bytes(size=(9, 7), fmt="JPEG"),
    "sixteen.tif": lambda: png_bytes(mode="I;16", fmt="TIFF"),
    "one.png": lambda: png_bytes(size=(1, 1)),
    "tall.ppm": lambda: png_bytes(size=(2, 40), fmt="PPM"),
}
BAD_FILES = {  # all end in an image suffix, none can be read
    "empty.png": lambda: b"",
    "text.png": lambda: b"not an image at all",
    "zero.png": zero_size_png,
    "half.png": lambda: png_bytes()[:40],
    "noiend.png": lambda: png_bytes()[:-12] + b"\x00" * 3,
    "random.jpg": lambda: bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8)),
    "header_only.gif": lambda: png_bytes(fmt="GIF")[:13],
}
IGNORED_FILES = {"notes.txt": lambda: png_bytes(), "image.png.bak": lambda: png_bytes(), ".DS_Store": lambda: b"\x00\x00"}


def _mutate_image(draw, raw: bytes) -> bytes:
    for _ in range(draw(st.integers(1, 3))):
        if not raw:
            break
        op = draw(st.sampled_from(["flip", "truncate", "zero_run", "insert"]))
        at = draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip":
            raw = raw[:at] + bytes([raw[at] ^ (1 << draw(st.integers(0, 7)))]) + raw[at + 1:]
        elif op == "truncate":
            raw = raw[:at]
        elif op == "zero_run":
            raw = raw[:at] + b"\x00" * 8 + raw[at + 8:]
        else:
            raw = raw[:at] + draw(st.binary(min_size=1, max_size=4)) + raw[at:]
    return raw


@st.composite
def image_folders(draw):
    """{relative path: bytes} for 1-3 class folders of good, bad, mutated and ignored files;
    each file name says its kind: '<i>-<kind>-<name>'."""
    files = {}
    for c in range(draw(st.integers(1, 3))):
        for i in range(draw(st.integers(0, 4))):
            kind = draw(st.sampled_from(["good", "good", "bad", "mutated", "ignored", "nested"]))
            if kind in ("good", "nested", "mutated"):
                name = draw(st.sampled_from(sorted(GOOD_FILES)))
                raw = GOOD_FILES[name]()
                raw = _mutate_image(draw, raw) if kind == "mutated" else raw
            elif kind == "bad":
                name = draw(st.sampled_from(sorted(BAD_FILES)))
                raw = BAD_FILES[name]()
            else:
                name = draw(st.sampled_from(sorted(IGNORED_FILES)))
                raw = IGNORED_FILES[name]()
            folder = f"class{c}/deeper/er" if kind == "nested" else f"class{c}"
            files[f"{folder}/{i}-{kind}-{name}"] = raw
    return files


def kind_of(rel: str) -> str:
    return Path(rel).name.split("-", 2)[1]


@pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # Pillow warns about the corrupt files it is fed here
@fuzz(120)
@given(files=image_folders())
def test_random_image_folders_load_fully_or_are_a_data_error(tmp_path_factory, files):
    root = tmp_path_factory.mktemp("folder") / "imgs"
    root.mkdir()
    for rel, raw in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(raw)
    for c in range(3):  # class folders that hold nothing still count as (empty) classes
        (root / f"class{c}").mkdir(exist_ok=True)
    result = check_dataset(root)
    kinds = [kind_of(rel) for rel in files]
    good = kinds.count("good") + kinds.count("nested")
    if good and "mutated" not in kinds:
        # only known files: every good one is used (nested ones too), every bad one skipped
        assert not isinstance(result, RescompileError), result
        assert len(result.train) + len(result.val) + len(result.test) == good
    if not good and "mutated" not in kinds:
        assert isinstance(result, DataError)


def test_unreadable_files_are_skipped_with_a_warning_when_others_remain(tmp_path, caplog):
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for name, make in GOOD_FILES.items():
            (root / c / name).write_bytes(make())
        for name, make in BAD_FILES.items():
            (root / c / name).write_bytes(make())
    with caplog.at_level(logging.WARNING):
        splits = check_dataset(root)
    assert not isinstance(splits, RescompileError)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 2 * len(GOOD_FILES)
    assert f"skipped {2 * len(BAD_FILES)} unreadable image file(s)" in caplog.text


def test_image_that_fails_only_when_decoded_is_a_data_error_then(tmp_path):
    """Listing checks files with verify() only; decoding is lazy, so such a file loads and its
    DataError (naming the file) comes when the batch holding it is decoded."""
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    (root / "a" / "ok.png").write_bytes(png_bytes())
    (root / "a" / "z_late.png").write_bytes(undecodable_png())
    splits = load_dataset(DataConfig(str(root)))
    assert len(splits.train) + len(splits.val) + len(splits.test) == 2
    with pytest.raises(DataError, match="cannot read image .*z_late.png") as info:
        iterate_fully(splits)
    check_message(info.value)
    # The first train image is decoded at once (to pick the input size): then loading fails.
    (root / "a" / "a_first.png").write_bytes(undecodable_png())
    with pytest.raises(DataError, match="cannot read image .*a_first.png"):
        load_dataset(DataConfig(str(root)))


def test_folders_of_only_unreadable_or_no_images_are_data_errors(tmp_path):
    only_bad = tmp_path / "bad"
    for c in ("a", "b"):
        (only_bad / c).mkdir(parents=True)
        for name, make in BAD_FILES.items():
            (only_bad / c / name).write_bytes(make())
    with pytest.raises(DataError, match="holds no readable images"):
        load_dataset(DataConfig(str(only_bad)))
    ignored = tmp_path / "ignored" / "a"
    ignored.mkdir(parents=True)
    for name, make in IGNORED_FILES.items():
        (ignored / name).write_bytes(make())
    with pytest.raises(DataError, match="holds no readable images"):
        load_dataset(DataConfig(str(ignored.parent)))
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.png").write_bytes(png_bytes())
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(DataConfig(str(tmp_path / "flat")))
    presplit = tmp_path / "presplit"
    for split, cls in (("train", "a"), ("val", "b")):
        (presplit / split / cls).mkdir(parents=True)
        (presplit / split / cls / "x.png").write_bytes(png_bytes())
    with pytest.raises(DataError, match="classes"):
        load_dataset(DataConfig(str(presplit)))


# -- 5. ONNX model intake ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def onnx_model_bytes(tmp_path_factory) -> bytes:
    """A valid ResNet-20 ONNX export (random weights), made once per session."""
    from rescompile.config import ExportConfig
    from rescompile.models.load import load_model
    from rescompile.stages.export import onnx_from_torch

    path = tmp_path_factory.mktemp("onnx") / "resnet20.onnx"
    src = load_model("resnet20")
    onnx_from_torch(src.module, src.spec, path, ExportConfig(check=False))
    return path.read_bytes()


def weight_ranges(raw: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the initializers' raw data: damage elsewhere hits the graph structure."""
    import onnx

    model = onnx.load_from_string(raw)
    ranges = []
    for init in model.graph.initializer:
        if len(init.raw_data) >= 64:
            at = raw.find(init.raw_data)
            if at >= 0:
                ranges.append((at, at + len(init.raw_data)))
    return sorted(ranges)


def check_model(path: Path):
    from rescompile.models.load import LoadedModel, load_model
    from rescompile.models.onnx_model import check_classifier

    before = listing(path.parent)
    loaded = outcome(load_model, path)
    if not isinstance(loaded, RescompileError):
        import onnx

        assert isinstance(loaded, LoadedModel) and loaded.kind == "onnx" and loaded.onnx_path == path
        check_classifier(onnx.load(str(path)), path)
        assert loaded.spec.num_classes >= 1 and loaded.spec.input_size >= 1
    assert listing(path.parent) == before
    return loaded


def test_valid_onnx_loads(tmp_path, onnx_model_bytes):
    path = tmp_path / "m.onnx"
    path.write_bytes(onnx_model_bytes)
    loaded = check_model(path)
    assert not isinstance(loaded, RescompileError) and loaded.spec.arch == "resnet20"


@fuzz(200)
@given(data=st.data())
def test_damaged_onnx_bytes_are_a_model_error_or_a_classifier(tmp_path, onnx_model_bytes, data):
    raw = onnx_model_bytes
    weights = weight_ranges(raw) if data.draw(st.booleans()) else []
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "flip", "truncate", "insert", "delete", "varint"]))
        if not raw:
            break
        at = data.draw(st.integers(0, len(raw) - 1))
        if weights and any(lo <= at < hi for lo, hi in weights):  # aim at structure, not weights
            lo, hi = next((lo, hi) for lo, hi in weights if lo <= at < hi)
            at = lo - 1 - (at - lo) % max(1, lo)
        if op == "flip":
            raw = raw[:at] + bytes([raw[at] ^ (1 << data.draw(st.integers(0, 7)))]) + raw[at + 1:]
        elif op == "truncate":
            raw = raw[:at]
        elif op == "insert":
            raw = raw[:at] + data.draw(st.binary(min_size=1, max_size=6)) + raw[at:]
        elif op == "delete":
            raw = raw[:at] + raw[at + data.draw(st.integers(1, 16)):]
        else:  # a huge varint: absurd lengths, dims and counts
            raw = raw[:at] + b"\xff" * 9 + b"\x01" + raw[at + 10:]
    path = tmp_path / "fuzz.onnx"
    path.write_bytes(raw)
    check_model(path)


@fuzz(80)
@given(raw=st.one_of(st.binary(max_size=200), st.binary(max_size=60).map(lambda b: b"\x08\x07" + b)))
def test_random_bytes_onnx_is_a_model_error(tmp_path, raw):
    path = tmp_path / "junk.onnx"
    path.write_bytes(raw)
    check_model(path)


def _graph_model(nodes, inputs, outputs, inits=(), metadata=None):
    from onnx import helper

    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by ONNX Runtime 1.23 (Python 3.10)
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def _conv_net(in_shape=("N", 3, 8, 8), out_shape=("N", 4), weights_as_input=False, extra_inputs=(), metadata=None):
    from onnx import TensorProto, helper, numpy_helper

    vi = helper.make_tensor_value_info
    w = numpy_helper.from_array(np.ones((4, in_shape[1] if isinstance(in_shape[1], int) else 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])]  # fmt: skip
    inputs = [vi("x", TensorProto.FLOAT, list(in_shape)), *extra_inputs]
    if weights_as_input:
        inputs.append(vi("w", TensorProto.FLOAT, [4, 3, 3, 3]))
    return _graph_model(nodes, inputs, [vi("y", TensorProto.FLOAT, list(out_shape))], [] if weights_as_input else [w], metadata)


def _not_classifiers():
    from onnx import TensorProto, helper

    vi = helper.make_tensor_value_info
    return {
        "no_conv": _graph_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                                [vi("y", TensorProto.FLOAT, ["N", 3, 8, 8])]),
        "two_inputs": _conv_net(extra_inputs=[vi("mask", TensorProto.FLOAT, ["N", 1])]),
        "dynamic_weights": _conv_net(weights_as_input=True),
        "rank3_input": _conv_net(in_shape=(3, 8, 8)),
        "five_channels": _conv_net(in_shape=("N", 5, 8, 8)),
        "rank4_output": _conv_net(out_shape=("N", 4, 1, 1)),
        "no_nodes": _graph_model([], [vi("x", TensorProto.FLOAT, ["N", 3, 8, 8])], [vi("x", TensorProto.FLOAT, ["N", 3, 8, 8])]),
        "dynamic_classes": _conv_net(out_shape=("N", "K")),
        "negative_size": _conv_net(in_shape=("N", 3, -5, -5)),
    }  # fmt: skip


@pytest.mark.parametrize("name", ["no_conv", "two_inputs", "dynamic_weights", "rank3_input", "five_channels", "rank4_output",
                                  "no_nodes", "negative_size"])  # fmt: skip
def test_valid_onnx_that_is_not_a_classifier_is_refused(tmp_path, name):
    import onnx

    path = tmp_path / f"{name}.onnx"
    onnx.save(_not_classifiers()[name], str(path))
    assert isinstance(check_model(path), ModelError)


def test_a_dynamic_class_count_is_inferred_from_the_weights(tmp_path):
    import onnx

    path = tmp_path / "dynamic_classes.onnx"
    onnx.save(_not_classifiers()["dynamic_classes"], str(path))
    loaded = check_model(path)
    assert not isinstance(loaded, Exception) and loaded.spec.num_classes == 4


_PREP = '{"arch": "x", "num_classes": %s, "preprocessing": {"input_size": %s, "mean": %s, "std": %s}}'


@pytest.mark.parametrize("meta", ["", "{", "null", "[1, 2]", '"resnet20"', "{}", '{"arch": "x"}', "[" * 50 + "]" * 50,
                                  _PREP % (-3, 0, "[0, 0, 0]", "[1, 1, 1]"), _PREP % (4, 8, "[0]", "[1]"),
                                  _PREP % (4, 8, '"abc"', "[1, 1, 1]"), _PREP % (4, 8, "[0, 0, 0]", "[0, 1, 1]")])  # fmt: skip
def test_corrupt_spec_metadata_is_a_model_error(tmp_path, meta):
    import onnx

    path = tmp_path / "meta.onnx"
    onnx.save(_conv_net(metadata={"rescompile.spec": meta}), str(path))
    assert isinstance(check_model(path), RescompileError)


# -- regressions: library bugs the fuzzers found (each used to leak the named exception) -------


@bug(ValueError, "bundle._load_json catches JSONDecodeError but json.loads raises a plain ValueError for an integer of "
                 "over 4300 digits (Python's int max_str_digits), so read_manifest and read_scales leak ValueError")
def test_found_huge_json_integers(bundle, tmp_path):
    b, doc = bundle
    text = json.dumps({**doc, "format_version": "@@"}).replace('"@@"', HUGE_INT_TEXT)
    (b / MANIFEST).write_text(text)
    outcome(read_manifest, b)
    (tmp_path / "scales.json").write_text(json.dumps(VALID_SCALES).replace("2.5", HUGE_INT_TEXT, 1))
    outcome(read_scales, tmp_path / "scales.json")


@bug(OverflowError, "scales.parse_scales calls math.isfinite(amax) on a JSON integer too big for a float (e.g. 400 digits): "
                    "OverflowError instead of ScalesError")
def test_found_scales_huge_integer_amax():
    outcome(parse_scales, {**VALID_SCALES, "tensors": {"t": {"amax": 10**400}}})


@bug(RuntimeError, "Path.expanduser() raises RuntimeError for '~nosuchuser/...': read_manifest, load_dataset and "
                   "load_model let it escape")
@pytest.mark.parametrize("reader", ["read_manifest", "load_dataset", "load_model"])
def test_found_unknown_user_home(reader):
    from rescompile.models.load import load_model

    fn = {"read_manifest": read_manifest, "load_dataset": lambda p: load_dataset(DataConfig(p)), "load_model": load_model}[reader]
    outcome(fn, "~no_such_user_rescompile_fuzz/thing.npz")


@bug(ValueError, "datasets._arrays reads .npz members outside its try: an object (pickled) array under 'images', "
                 "'labels' or 'classes' raises numpy's ValueError (not unpickled, but not a DataError)")
@pytest.mark.parametrize("key", ["images", "labels", "classes"])
def test_found_npz_object_arrays(tmp_path, key):
    marker = tmp_path / "unpickled"
    content = {"images": np.zeros((4, 4, 4, 3), np.uint8), "labels": np.arange(4) % 2}
    content[key] = np.array([Tripwire(marker)] * 4, dtype=object)
    np.savez(tmp_path / "evil.npz", **content)
    try:
        check_dataset(tmp_path / "evil.npz")
    finally:
        assert not marker.exists(), "the loader unpickled code from the file"


@bug(ValueError, "datasets._arrays: labels that are not numbers (e.g. strings) fail in astype(np.int64) with ValueError")
def test_found_npz_string_or_object_labels(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 4, 4, 3), np.uint8), labels=np.array(["cat", "dog"]))
    check_dataset(tmp_path / "d.npz")


@bug((zipfile.BadZipFile, zlib.error, EOFError, KeyError, ValueError, OSError),
     "datasets._arrays: a damaged .npz (truncated, or a damaged member) raises zipfile/zlib errors: np.load only "
     "opens the archive, members are read later outside the try")  # fmt: skip
@pytest.mark.parametrize("damage", ["truncated", "member"])
def test_found_damaged_npz(tmp_path, damage):
    buf = io.BytesIO()
    np.savez_compressed(buf, images=np.random.default_rng(0).integers(0, 256, (8, 6, 6, 3), dtype=np.uint8))
    raw = buf.getvalue()
    raw = raw[: len(raw) // 2] if damage == "truncated" else raw[:60] + bytes(b ^ 0x55 for b in raw[60:90]) + raw[90:]
    (tmp_path / "d.npz").write_bytes(raw)
    check_dataset(tmp_path / "d.npz")


@bug((MemoryError, ValueError), "datasets._arrays: an .npz member whose header declares a huge shape makes numpy "
                                "allocate it (MemoryError) or hit EOF (ValueError), outside the try")
def test_found_npz_huge_declared_shape(tmp_path):
    with zipfile.ZipFile(tmp_path / "big.npz", "w") as zf:
        zf.writestr("images.npy", npy_header((2**40, 4, 4, 3), descr="|u1"))
    check_dataset(tmp_path / "big.npz")


@bug(Hang, "datasets._arrays builds tuple(str(i) for i in range(labels.max() + 1)): one label of 2**40 in a "
           "2-image .npz takes unbounded time and memory")
def test_found_npz_huge_label(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((2, 4, 4, 3), np.uint8), labels=np.array([0, 2**40]))
    with no_hang(0.5):  # short: the runaway loop allocates ~500 MB a second
        check_dataset(tmp_path / "d.npz")


@bug(AssertionError, "datasets._arrays accepts labels that index past the 'classes' array (classes=['a'], labels=[0, 5]): "
                     "num_classes is 1 but a label is 5, which training/accuracy then index with")
def test_found_npz_labels_beyond_classes(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((6, 4, 4, 3), np.uint8), labels=np.array([0, 5] * 3), classes=np.array(["a"]))
    splits = check_dataset(tmp_path / "d.npz")
    assert isinstance(splits, DataError), f"accepted {splits.num_classes} class(es) for label 5"


@bug(MemoryError, "datasets._arrays: a 64-byte .npy whose header declares shape (2**40,) makes np.load allocate 8 TiB: "
                  "MemoryError (not caught: only OSError/ValueError are)")
def test_found_npy_huge_declared_shape(tmp_path):
    (tmp_path / "big.npy").write_bytes(npy_header((2**40,)))
    check_dataset(tmp_path / "big.npy")


@bug(EOFError, "datasets._arrays: an empty .npy/.npz file makes np.load raise EOFError('No data left in file'), not caught")
@pytest.mark.parametrize("suffix", ["npy", "npz"])
def test_found_empty_array_file(tmp_path, suffix):
    (tmp_path / f"empty.{suffix}").write_bytes(b"")
    check_dataset(tmp_path / f"empty.{suffix}")


@bug((ValueError, RecursionError, OverflowError),
     "onnx_model.spec_from_onnx catches only JSONDecodeError around json.loads of the rescompile.spec metadata, and "
     "ModelSpec.from_dict only KeyError/TypeError/ValueError: a 5000-digit number (ValueError), deep nesting "
     "(RecursionError) or num_classes 1e400 (OverflowError from int(inf)) escape load_model")  # fmt: skip
@pytest.mark.parametrize("meta", ["1" * 5000, "[" * 100_000, '{"arch": "x", "num_classes": 1e400, "preprocessing": {}}'],
                         ids=["huge_int", "deep", "inf_classes"])  # fmt: skip
def test_found_onnx_spec_metadata(tmp_path, meta):
    import onnx

    path = tmp_path / "meta.onnx"
    onnx.save(_conv_net(metadata={"rescompile.spec": meta}), str(path))
    check_model(path)


def _onnx_validation_error():
    import onnx.checker

    return onnx.checker.ValidationError


@bug(_onnx_validation_error(), "onnx_model.load_onnx: onnx.load refuses external tensor data that is outside the model's folder, "
                               "absolute, missing or a symlink with onnx.checker.ValidationError, which load_onnx does not catch")
@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd", "missing.bin", "link.bin"])
def test_found_onnx_external_data(tmp_path, location):
    from onnx import TensorProto

    model = _conv_net()
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    (tmp_path / "outside.bin").write_bytes(bytes(4 * 4 * 3 * 3 * 3))
    os.symlink(tmp_path / "outside.bin", tmp_path / "link.bin")
    path = tmp_path / "ext.onnx"
    path.write_bytes(model.SerializeToString())
    check_model(path)


@bug(AssertionError, "error messages quote offending values in full: a 100,000-character 'format' string in manifest.json "
                     "or scales.json becomes a 100,000-character error line (bundle._parse, scales.parse_scales)")
def test_found_error_messages_quote_unbounded_values(bundle):
    b, doc = bundle
    (b / MANIFEST).write_text(json.dumps({**doc, "format": "x" * 100_000}))
    for result in (outcome(read_manifest, b), outcome(parse_scales, {"format": "x" * 100_000})):
        assert isinstance(result, RescompileError)
        assert len(str(result)) <= 2000, f"a {len(str(result))}-character message"


@bug(tokenize.TokenError, "datasets._arrays: a .npy whose header is damaged (here one bit of the header-length field) makes "
                          "numpy's header parser raise tokenize.TokenError, which is neither OSError nor ValueError")
def test_found_npy_damaged_header(tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 6, 6, 3), np.uint8))
    raw = bytearray(buf.getvalue())
    raw[8] ^= 1 << 6  # header length 118 -> 54: the header dict is cut in the middle
    (tmp_path / "d.npy").write_bytes(bytes(raw))
    check_dataset(tmp_path / "d.npy")
