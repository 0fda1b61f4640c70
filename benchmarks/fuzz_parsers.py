"""Mutation fuzzing of the calibration-cache and bundle-manifest parsers, at volume.

Starts from valid inputs, damages them (characters, lines, hex, headers; JSON keys, value types,
paths, raw numbers, nesting, bytes) and sorts every outcome into:

- "clean error": a RescompileError whose message is one line;
- "correct parse": a cache that round-trips through to_text(), or a manifest whose every resolved
  path is a regular file inside the bundle (and whose verify() only passes for matching files);
- "FAILURE (<what>)": any other exception, a wrong parse, a multi-line message, a hang, or a
  reader that changed the bundle directory.

Plain ``random`` (not hypothesis) for speed; the same --seed gives the same cases.

    python benchmarks/fuzz_parsers.py --cache-cases 100000 --manifest-cases 10000 --seed 0

Exits 1 when any case fails, after printing the first failures with a reproduction.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import hashlib
import json
import math
import os
import random
import signal
import struct
import sys
import tempfile
import time
from pathlib import Path

from rescompile.bundle import MANIFEST, Manifest, read_manifest, verify
from rescompile.data.preprocess import Preprocessing
from rescompile.errors import RescompileError
from rescompile.models.spec import ModelSpec
from rescompile.stages.calibrate.cache import ALGORITHMS, CalibrationCache, cache_from_scales, parse_cache

CLEAN, CORRECT = "clean error", "correct parse"
HANG_SECONDS = 10.0  # one parse of an input of a few KiB takes well under a millisecond


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    def fire(_signum, _frame):
        raise Hang(f"no result after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def clean(exc: RescompileError) -> str:
    text = str(exc)
    if not text.strip() or len(text.splitlines()) != 1:
        return "FAILURE (message is not one line)"
    return CLEAN


LAST_ERROR = [""]  # the exception behind the latest FAILURE verdict, for the report


def failure(exc: BaseException) -> str:
    LAST_ERROR[0] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return f"FAILURE ({type(exc).__name__})"


# -- calibration cache -------------------------------------------------------------------------

NAME_CHARS = "abcxyz_/.:0123456789 -é卷Ψ\u2028\x85\t"
PIECES = ["\n", "\r", "\r\n", ":", ": ", " ", "\t", "\x00", "\ufeff", "\u2028", "\x85", "é", "\ud800", "\U0001f600", "0", "f",
          "F", "g", "-", "TRT-", "7f800000", "7fc00000", "ff800000", "80000000", "00000000", "00000001", "١", "０"]  # fmt: skip
HEX = "0123456789abcdefABCDEF"


def random_scale(rng: random.Random) -> float:
    """A positive finite float32, from denormals to near the top of the range."""
    while True:
        value = struct.unpack(">f", struct.pack(">I", rng.getrandbits(31)))[0]
        if math.isfinite(value) and value > 0:
            return value


def valid_cache(rng: random.Random) -> str:
    # dict.fromkeys, not a set: set order follows string hashing, which differs run to run
    names = dict.fromkeys("".join(rng.choice(NAME_CHARS) for _ in range(rng.randint(1, 12))) for _ in range(rng.randint(1, 8)))
    scales = {n: random_scale(rng) for n in names}
    version = rng.choice(["8.6.1", "10.3.0", "10.14.1", "9.0.0"])
    return cache_from_scales(scales, version=version, algorithm=rng.choice(ALGORITHMS)).to_text()


def mutate_cache(rng: random.Random, text: str) -> str:
    lines = text.split("\n")
    op = rng.choice(["insert", "delete", "replace", "dup", "drop", "swap", "truncate", "crlf", "hex", "header", "unicode",
                     "strip", "case"])  # fmt: skip
    at = rng.randint(0, max(0, len(text) - 1))
    if op == "insert":
        piece = rng.choice(PIECES) if rng.random() < 0.7 else chr(rng.randint(0, 0x10FFFF))
        return text[:at] + piece + text[at:]
    if op == "delete":
        return text[:at] + text[at + rng.randint(1, 4):]
    if op == "replace":
        return text[:at] + (rng.choice(PIECES) if rng.random() < 0.5 else chr(rng.randint(0, 0x2FFF))) + text[at + 1:]
    i = rng.randint(0, len(lines) - 1)
    if op == "dup":
        return "\n".join(lines[: i + 1] + [lines[i]] + lines[i + 1:])
    if op == "drop":
        return "\n".join(lines[:i] + lines[i + 1:])
    if op == "swap":
        j = rng.randint(0, len(lines) - 1)
        lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines)
    if op == "truncate":
        return text[:at]
    if op == "crlf":
        return text.replace("\n", rng.choice(["\r\n", "\r", "\n\n", "\r\r\n", "\n\r"]))
    if op == "hex":  # hex of every length, none and too many digits included
        i = rng.randint(1, len(lines) - 1) if len(lines) > 1 else 0
        name = lines[i].rpartition(": ")[0] or "t"
        lines[i] = f"{name}: " + "".join(rng.choice(HEX) for _ in range(rng.randint(0, 12)))
        return "\n".join(lines)
    if op == "header":
        code = rng.choice([str(rng.randint(0, 10**10)), "8601", "100300", "0008601", "", "x", "9" * rng.randint(1, 40)])
        algo = rng.choice([*ALGORITHMS, "", "Entropy", "entropycalibration2", "EntropyCalibration2 "])
        lines[0] = f"TRT-{code}-{algo}"
        return "\n".join(lines)
    if op == "unicode":
        lines.insert(rng.randint(0, len(lines)), "".join(chr(rng.randint(0, 0x10FFFF)) for _ in range(rng.randint(0, 12))))
        return "\n".join(lines)
    if op == "strip":
        return text.rstrip("\n")
    return text.upper() if rng.random() < 0.5 else text.lower()


def bits(x: float) -> int:
    return struct.unpack(">I", struct.pack(">f", x))[0]


def judge_cache(text: str) -> str:
    try:
        with time_limit(HANG_SECONDS):
            cache = parse_cache(text)
    except RescompileError as exc:
        return clean(exc)
    except BaseException as exc:  # noqa: BLE001 - classifying every outcome is the point
        if isinstance(exc, KeyboardInterrupt):
            raise
        return failure(exc)
    if not isinstance(cache, CalibrationCache):
        return "FAILURE (parse_cache returned no CalibrationCache)"
    try:
        again = parse_cache(cache.to_text())
    except Exception as exc:  # noqa: BLE001
        return f"FAILURE (to_text() output does not parse: {type(exc).__name__})"
    if again != cache or list(again.scales) != list(cache.scales):
        return "FAILURE (round trip changed the cache)"
    if [bits(v) for v in again.scales.values()] != [bits(v) for v in cache.scales.values()]:
        return "FAILURE (round trip changed scale bits)"
    if any(f"{name}: " not in text for name in cache.scales):
        return "FAILURE (parsed a name that is not in the text)"
    return CORRECT


def cache_cases(rng: random.Random, count: int):
    for _ in range(count):
        if rng.random() < 0.03:  # now and then plain random text
            yield "".join(chr(rng.randint(0, 0x2FFF)) for _ in range(rng.randint(0, 80)))
            continue
        text = valid_cache(rng)
        for _ in range(rng.randint(1, 4)):
            text = mutate_cache(rng, text)
        yield text


# -- bundle manifest ---------------------------------------------------------------------------

OUTSIDE_TEXT = b"secret outside the bundle\n"
FILES = {"fp32_onnx": "model_fp32.onnx", "scales": "scales.json", "calibration_cache": "calibration.cache",
         "engine": "sub/model.engine"}  # fmt: skip
PATHS = [
    "../x", "../outside/secret.txt", "/etc/passwd", "C:\\x", "C:x", "c:/x", "\\\\server\\share\\x", "//server/x", "\\x",
    "a/../../b", "sub/../../outside/secret.txt", "..\\outside\\secret.txt", "a\\..\\..\\b", "..", "./..", "sub/..", "",
    ".", "./", "/", "//", "\\", "sub", "sub/", "a_dir", "x" * 300, "d/" * 3000 + "f", "\x00", "a\x00b", "scales.json\x00",
    "out_link", "out_dir/secret.txt", "out_dir", "dangling", "loop", "loop/x", "fifo", "~/x", "$HOME/x", "\ud800", "\udcff",
    "scales.json\n", " scales.json", "scales.json/", "file:///etc/passwd", "/proc/self/environ", "in_link",
    "sub/./model.engine", "./scales.json", "sub\\model.engine", "manifest.json", "model_fp32.onnx",
]  # fmt: skip
RAW = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "-0", "1" * 400, "1" * 5000, '"\\ud800"', '"\\u0000"',
       "[" * 50 + "]" * 50, '{"a": ' * 50 + "1" + "}" * 50, "[" * 3000 + "]" * 3000]  # fmt: skip
VALUES = [None, True, False, 0, 1, -1, 2, 3, 1.5, -0.0, 2**63, 2**64, -(2**63) - 1, 10**30, "", "x", "2", "rescompile.bundle",
          [], [1], ["batch", 3, 32, 32], {}, {"path": "scales.json"}, "a" * 5000, "0" * 64, "F" * 64]  # fmt: skip


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_bundle(root: Path) -> tuple[Path, dict]:
    """A valid v2 bundle beside an 'outside' folder, with links in and out, a loop, a FIFO."""
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(OUTSIDE_TEXT)
    b = root / "bundle"
    (b / "sub").mkdir(parents=True)
    (b / "a_dir").mkdir()
    (b / "model_fp32.onnx").write_bytes(b"fp32 model bytes" * 50)
    (b / "scales.json").write_text('{"input": 0.1}')
    (b / "calibration.cache").write_text("TRT-100300-EntropyCalibration2\ninput: 3c010a14\n")
    (b / "sub" / "model.engine").write_bytes(b"engine" * 7)
    os.symlink(outside / "secret.txt", b / "out_link")
    os.symlink("../outside", b / "out_dir")
    os.symlink("model_fp32.onnx", b / "in_link")
    os.symlink("nowhere", b / "dangling")
    os.symlink("loop", b / "loop")
    os.mkfifo(b / "fifo")
    spec = ModelSpec("resnet20", 10, Preprocessing(32), tuple("abcdefghij"), {}, "digits")
    doc = {
        "format": "rescompile.bundle",
        "format_version": 2,
        "rescompile_version": "0.1.0",
        "model": {"source": "resnet20", "kind": "name", "metrics": {}},
        "spec": spec.to_dict(),
        "precision": "int8",
        "calibration": None,
        "files": {role: {"path": rel, "sha256": sha256(b / rel), "bytes": (b / rel).stat().st_size} for role, rel in FILES.items()},
        "input": {"name": "input", "shape": ["batch", 3, 32, 32], "dtype": "float32"},
        "output": {"name": "logits", "shape": ["batch", 10], "dtype": "float32"},
        "engine": {"path": "sub/model.engine", "tensorrt_version": "10.3.0"},
        "cpu_artifact": {"path": "model_fp32.onnx"},
    }
    return b, doc


def spots(node, out, trail=""):
    """Every (container, key, key path) of a JSON document."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        where = f"{trail}[{key!r}]"
        out.append((node, key, where))
        spots(value, out, where)
    return out


def shown(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def damage_bytes(rng: random.Random, raw: bytes, edits: list[str]) -> bytes:
    op = rng.choice(["flip", "insert", "delete", "truncate", "random", "utf16", "bom"])
    at = rng.randint(0, max(0, len(raw) - 1))
    if op == "flip" and raw:
        bit = rng.randint(0, 7)
        edits.append(f"flip bit {bit} of byte {at}")
        return raw[:at] + bytes([raw[at] ^ (1 << bit)]) + raw[at + 1:]
    if op == "insert":
        extra = rng.randbytes(rng.randint(1, 4))
        edits.append(f"insert {extra!r} at byte {at}")
        return raw[:at] + extra + raw[at:]
    if op == "delete":
        n = rng.randint(1, 8)
        edits.append(f"delete {n} bytes at {at}")
        return raw[:at] + raw[at + n:]
    if op == "truncate":
        edits.append(f"truncate to {at} bytes")
        return raw[:at]
    if op == "random":
        raw = rng.randbytes(rng.randint(0, 300))
        edits.append(f"replace everything with {shown(raw, 200)}")
        return raw
    if op == "utf16":
        edits.append("re-encode as UTF-16")
        return raw.decode("utf-8", "replace").encode("utf-16")
    edits.append("prepend a UTF-8 BOM")
    return b"\xef\xbb\xbf" + raw


def mutate_manifest(rng: random.Random, base: dict) -> tuple[bytes, list[str]]:
    """Damaged manifest bytes and the edits that made them from ``base`` (the reproduction)."""
    edits: list[str] = []
    if rng.random() < 0.25:  # byte-level damage of the valid text
        indent = rng.choice([None, 2])
        edits.append(f"json.dumps(manifest, indent={indent}).encode()")
        raw = json.dumps(base, indent=indent).encode()
        for _ in range(rng.randint(1, 3)):
            raw = damage_bytes(rng, raw, edits)
        return raw, edits
    doc = copy.deepcopy(base)
    raw_values = {}
    for _ in range(rng.randint(1, 3)):
        every = spots(doc, [])
        paths = [s for s in every if s[1] == "path"]
        container, key, where = rng.choice(paths if paths and rng.random() < 0.4 else every)
        op = rng.choice(["delete", "value", "path", "raw", "rename", "wrap", "sha", "bytes"])
        if op == "delete" and isinstance(container, dict):
            del container[key]
            edits.append(f"del manifest{where}")
        elif op == "rename" and isinstance(container, dict):
            new_key = rng.choice(["", "Path", "files", "spec", f"{key} ", "\x00"])
            container[new_key] = container.pop(key)
            edits.append(f"rename manifest{where} to {new_key!r}")
        elif op == "path":
            container[key] = rng.choice(PATHS)
            edits.append(f"manifest{where} = {shown(container[key])}")
        elif op == "raw":
            marker = f"@@raw{len(raw_values)}@@"
            raw_values[marker] = rng.choice(RAW)
            container[key] = marker
            edits.append(f"manifest{where} = raw JSON text {shown(raw_values[marker])}")
        elif op == "wrap":
            container[key] = rng.choice([[container[key]], {"value": container[key]}])
            edits.append(f"manifest{where} wrapped in a {type(container[key]).__name__}")
        elif op in ("sha", "bytes"):  # a wrong but well-formed digest or size
            role = rng.choice(list(FILES))
            entry = doc["files"].get(role) if isinstance(doc.get("files"), dict) else None
            if isinstance(entry, dict):
                if op == "sha":
                    entry["sha256"] = rng.choice(["0" * 64, "".join(rng.choice("0123456789abcdef") for _ in range(64)),
                                                  str(entry.get("sha256", "")).upper()])  # fmt: skip
                else:
                    entry["bytes"] = rng.choice([0, 1, 799, 801, 42, 2**70, -5])
                field = "sha256" if op == "sha" else "bytes"
                edits.append(f"manifest['files'][{role!r}][{field!r}] = {shown(entry[field])}")
        else:
            container[key] = rng.choice(VALUES) if rng.random() < 0.8 else rng.uniform(-1e300, 1e300)
            edits.append(f"manifest{where} = {shown(container[key])}")
    text = json.dumps(doc)
    for marker, value in raw_values.items():
        text = text.replace(json.dumps(marker), value)
    return text.encode("utf-8", "surrogatepass"), edits


def listing(root: Path) -> list:
    return sorted((str(p.relative_to(root)), p.is_symlink() or not p.is_file() or p.stat().st_size) for p in root.rglob("*"))


def judge_manifest(bundle: Path) -> str:
    before = listing(bundle.parent)
    verdict = _judge_manifest(bundle)
    if listing(bundle.parent) != before:
        return "FAILURE (reading changed the bundle directory)"
    return verdict


def _judge_manifest(bundle: Path) -> str:
    base = bundle.resolve()
    try:
        with time_limit(HANG_SECONDS):
            m = read_manifest(bundle)
            if not isinstance(m, Manifest):
                return "FAILURE (read_manifest returned no Manifest)"
            for role in list(m.files):
                try:
                    path = m.file(role)
                except RescompileError as exc:
                    if clean(exc) != CLEAN:
                        return clean(exc)
                    continue
                if not (path.is_absolute() and path.resolve() == path and path.is_relative_to(base) and path.is_file()):
                    return f"FAILURE (files.{role} resolved outside the bundle: {path})"
                if path.read_bytes() == OUTSIDE_TEXT:
                    return f"FAILURE (files.{role} reads the file outside the bundle)"
            for section in (m.engine, m.cpu_artifact):
                if section is not None:
                    try:
                        path = m.resolve(section["path"])
                    except RescompileError as exc:
                        if clean(exc) != CLEAN:
                            return clean(exc)
                        continue
                    if not (path.resolve() == path and path.is_relative_to(base) and path.is_file()):
                        return f"FAILURE (a section path resolved outside the bundle: {path})"
            try:
                verify(m)
            except RescompileError as exc:
                if clean(exc) != CLEAN:
                    return clean(exc)
            else:
                for role, entry in m.files.items():
                    if m.file(role).stat().st_size != entry.bytes or sha256(m.file(role)) != entry.sha256:
                        return f"FAILURE (verify passed but files.{role} does not match)"
    except RescompileError as exc:
        return clean(exc)
    except BaseException as exc:  # noqa: BLE001 - classifying every outcome is the point
        if isinstance(exc, KeyboardInterrupt):
            raise
        return failure(exc)
    return CORRECT


# -- driver ------------------------------------------------------------------------------------


def shorten(value, limit: int = 400) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters in all)"


def run(label: str, cases, judge, reproduce, show: int, failures_dir: Path | None) -> tuple[collections.Counter, float]:
    counts: collections.Counter = collections.Counter()
    failures = []
    start = time.perf_counter()
    for case in cases:
        verdict = judge(case)
        counts[verdict] += 1
        if verdict.startswith("FAILURE"):
            failures.append((verdict, case, LAST_ERROR[0]))
            LAST_ERROR[0] = ""
    elapsed = time.perf_counter() - start
    total = sum(counts.values())
    print(f"\n{label}: {total} cases in {elapsed:.1f} s ({total / max(elapsed, 1e-9):,.0f} cases/s)")
    for verdict, n in sorted(counts.items(), key=lambda kv: (kv[0].startswith("FAILURE"), -kv[1])):
        print(f"  {verdict:<48} {n:>8}")
    causes = collections.Counter(f"{verdict}: {error[:100]}" if error else verdict for verdict, _, error in failures)
    if causes:
        print(f"  {len(causes)} distinct failure cause(s):")
        for cause, n in causes.most_common():
            print(f"    {n:>6} x {cause}")
    for i, (verdict, case, error) in enumerate(failures[:show]):
        print(f"  failure {i + 1}: {verdict}" + (f"\n    raised: {error}" if error else ""))
        print(f"    reproduce: {reproduce(case)}")
    if failures_dir is not None and failures:
        failures_dir.mkdir(parents=True, exist_ok=True)
        for i, (_, case, _) in enumerate(failures):
            data = case[0] if isinstance(case, tuple) else case.encode("utf-8", "surrogatepass")
            (failures_dir / f"{label.split()[0]}-{i:05d}.bin").write_bytes(data)
        print(f"  all {len(failures)} failing inputs written to {failures_dir}")
    return counts, elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-cases", type=int, default=100_000, help="calibration-cache cases (default: %(default)s)")
    parser.add_argument("--manifest-cases", type=int, default=10_000, help="bundle-manifest cases (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed: the same seed runs the same cases")
    parser.add_argument("--show", type=int, default=5, help="failures to print per parser (default: %(default)s)")
    parser.add_argument("--failures-dir", type=Path, default=None, help="also write every failing input here")
    args = parser.parse_args(argv)
    if args.cache_cases < 0 or args.manifest_cases < 0:
        parser.error("case counts must be >= 0")

    rng = random.Random(args.seed)
    cache_counts, cache_s = run(
        "calibration cache (parse_cache)", cache_cases(rng, args.cache_cases), judge_cache,
        lambda text: f"parse_cache({shorten(text)})", args.show, args.failures_dir,
    )
    with tempfile.TemporaryDirectory(prefix="rescompile-fuzz-") as tmp:
        bundle, doc = make_bundle(Path(tmp))

        def judge(case: tuple[bytes, list[str]]) -> str:
            (bundle / MANIFEST).write_bytes(case[0])
            return judge_manifest(bundle)

        manifest_counts, manifest_s = run(
            "bundle manifest (read_manifest, Manifest.file, verify)",
            (mutate_manifest(rng, doc) for _ in range(args.manifest_cases)), judge,
            lambda case: "in the bundle make_bundle() lays out, edit the valid manifest: " + "; ".join(case[1])
            + " -> manifest.json, then read_manifest(bundle), .file(role) for each role, verify()",
            args.show, args.failures_dir,
        )
    failed = sum(n for c in (cache_counts, manifest_counts) for v, n in c.items() if v.startswith("FAILURE"))
    print(f"\ntotal: {sum(cache_counts.values()) + sum(manifest_counts.values())} cases in {cache_s + manifest_s:.1f} s, "
          f"{failed} failure(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
