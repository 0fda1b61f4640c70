"""NVIDIA's compiled TensorRT Python bindings, importable here without TensorRT's libraries.

PyPI serves the bindings of every TensorRT release as ordinary wheels: ``tensorrt-cu12-bindings``
(module ``tensorrt_bindings``, one ~1.2 MB wheel per CPython version). Their extension module
links against ``libnvinfer.so.N``, ``libnvinfer_plugin.so.N`` and ``libnvonnxparser.so.N``
(``tensorrt-cu12-libs``, far too big and GPU-bound to install here), but it only calls into them
when an object is created (``trt.Builder(logger)`` calls ``createInferBuilder_INTERNAL``).
So a stub library per NEEDED entry, exporting the C entry points the extension imports and
returning null, lets ``import tensorrt_bindings`` succeed and expose the real classes, enums,
properties, pybind signatures and calibrator trampolines; creating a Builder, Runtime or parser
then raises pybind's ``TypeError: ... factory function returned nullptr``.

The symbols and libraries are read from the extension's ELF dynamic section (not from a list
written here): the undefined, unversioned, global symbols that this interpreter does not already
provide (``Py*``; ``dlopen`` & co. from libc on 11.4), and the NEEDED ``libnv*`` entries.

A ``tensorrt`` package shim on PYTHONPATH makes the bindings importable as ``tensorrt``, exactly
as NVIDIA's own front-end package does (python/packaging/frontend_sdist/tensorrt/__init__.py:
``from tensorrt_bindings import *`` and ``from tensorrt_bindings import __version__``). Each use
runs in a subprocess, so two versions never meet in one interpreter.

Wheels and prepared trees are cached under ``$RESCOMPILE_TEST_CACHE/trt-bindings`` (default
``~/.cache/rescompile-test/trt-bindings``); a cached release needs neither the network nor pip.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "tensorrt-cu12-bindings"
REPO_ROOT = Path(__file__).resolve().parents[2]
MARK = "@@TRT-BINDINGS-RESULT@@"
SELECT_ENV = "RESCOMPILE_TRT_BINDINGS"  # comma-separated versions: run only these releases
_UNREACHABLE: list[str] = []  # why pip timed out, once it has in this session


@dataclass(frozen=True)
class Release:
    version: str  # PyPI version of tensorrt-cu12-bindings, which is also its tensorrt.__version__
    surface: str  # the tests/trt_api/surface.py VERSIONS key it is compared with
    exact: bool  # True: surface.py describes this release row by row (every row is checked)
    why: str


# Which releases rescompile supports and why each is here. "exact": surface.py was read at this
# release's tag (v10.3.0 = 10.3.0.26, v10.16 = 10.16.0.72, v11.1 = 11.1.0.106), or its docstring
# says the rows are the same (v11.0 = 11.0.0.114). The others are checked on the rows rescompile
# and Polygraphy touch that the nearest surface version has.
RELEASES = (
    Release("10.3.0", "10.3.0", True, "JetPack 6"),
    Release("10.7.0.post1", "10.3.0", False, "10.7: last 10.x with DLA on Orin (pip resolves 10.7.* to .post1)"),
    Release("10.16.0.72", "10.16.0", True, "the v10.16 tag surface.py was read at"),
    Release("10.16.1.11", "10.16.0", False, "newest 10.x on PyPI"),
    Release("11.0.0.114", "11.1.0", True, "first 11.x (surface.py: same rows as v11.1)"),
    Release("11.1.0.106", "11.1.0", True, "the v11.1 tag surface.py was read at"),
    Release("11.4.0.106", "11.1.0", False, "newest 11.x on PyPI"),
)


class Unavailable(Exception):
    """This machine cannot prepare the release (the message says why): the test is skipped."""


def cache_root() -> Path:
    base = os.environ.get("RESCOMPILE_TEST_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "rescompile-test"
    return root / "trt-bindings"


def python_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def platform_problem() -> str | None:
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        return f"NVIDIA's {PACKAGE} wheels are used here for x86-64 Linux only (this is {sys.platform}/{platform.machine()})"
    return None


# -- the wheel ----------------------------------------------------------------------------------

def _cached_wheel(wheels: Path, version: str) -> Path | None:
    pattern = f"tensorrt_cu12_bindings-{version}-{python_tag()}-*x86_64.whl"
    found = sorted(wheels.glob(pattern))
    return found[-1] if found else None


def fetch_wheel(version: str, wheels: Path) -> Path:
    """The cached wheel for this interpreter, downloaded with pip the first time."""
    wheel = _cached_wheel(wheels, version)
    if wheel is not None:
        return wheel
    if _UNREACHABLE:
        raise Unavailable(f"no cached wheel of {PACKAGE}=={version}, and PyPI was unreachable earlier: {_UNREACHABLE[0]}")
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--timeout", "20", "--retries", "1", "-q", f"{PACKAGE}=={version}", "-d", str(wheels)]
    start = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unavailable(f"cannot run pip to download {PACKAGE}=={version}: {exc}") from exc
    wheel = _cached_wheel(wheels, version)
    if done.returncode != 0 or wheel is None:
        lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip() and "is ignored" not in ln]
        why = lines[-1] if lines else f"pip exit {done.returncode}"
        if time.monotonic() - start > 15:  # a network that hangs: do not wait that long for every release
            _UNREACHABLE.append(why)
        raise Unavailable(
            f"no cached wheel and pip could not download {PACKAGE}=={version} for {python_tag()} "
            f"(offline, or no wheel for this Python): {why}"
        )
    return wheel


# -- what the extension needs from TensorRT's libraries (ELF64 .dynamic / .dynsym) --------------

def _sections(data: bytes) -> list[tuple[int, int, int, int]]:
    """(type, offset, size, link) of every section header of a little-endian ELF64 x86-64 file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a little-endian ELF64 file")
    (e_machine,) = struct.unpack_from("<H", data, 18)
    if e_machine != 62:
        raise ValueError(f"not an x86-64 ELF file (e_machine {e_machine})")
    e_shoff, = struct.unpack_from("<Q", data, 40)
    e_shentsize, e_shnum = struct.unpack_from("<HH", data, 58)
    out = []
    for i in range(e_shnum):
        _name, sh_type, _flags, _addr, offset, size, link = struct.unpack_from("<IIQQQQI", data, e_shoff + i * e_shentsize)
        out.append((sh_type, offset, size, link))
    return out


def _cstr(data: bytes, start: int) -> str:
    return data[start:data.index(b"\0", start)].decode()


def elf_imports(path: Path) -> tuple[list[str], list[str]]:
    """(NEEDED libraries, undefined global unversioned symbols) of a shared object."""
    data = path.read_bytes()
    sections = _sections(data)
    needed: list[str] = []
    symbols: list[str] = []
    versym: tuple[int, ...] = ()
    for sh_type, offset, size, _link in sections:
        if sh_type == 0x6FFFFFFF:  # SHT_GNU_versym: one uint16 per .dynsym entry
            versym = struct.unpack_from(f"<{size // 2}H", data, offset)
    for sh_type, offset, size, link in sections:
        strtab = sections[link][1]
        if sh_type == 6:  # SHT_DYNAMIC
            for i in range(0, size, 16):
                tag, val = struct.unpack_from("<qQ", data, offset + i)
                if tag == 1:  # DT_NEEDED
                    needed.append(_cstr(data, strtab + val))
        elif sh_type == 11:  # SHT_DYNSYM
            for n, i in enumerate(range(0, size, 24)):
                st_name, st_info, _other, st_shndx = struct.unpack_from("<IBBH", data, offset + i)
                version = versym[n] & 0x7FFF if n < len(versym) else 1
                if st_name and st_shndx == 0 and st_info >> 4 == 1 and version <= 1:  # UNDEF, GLOBAL, no version
                    symbols.append(_cstr(data, strtab + st_name))
    return needed, symbols


def stub_plan(extension: Path) -> tuple[list[str], list[str]]:
    """(libraries to stub, symbols each exports): TensorRT's NEEDED libraries, and the imported
    symbols this interpreter does not provide itself (Python's C API, libc's dlopen...)."""
    needed, symbols = elf_imports(extension)
    here = ctypes.CDLL(None)
    missing = sorted({s for s in symbols if not hasattr(here, s)})
    libs = [lib for lib in needed if lib.startswith("libnv")]
    if not libs or not missing:
        raise ValueError(f"{extension.name}: expected TensorRT libraries among NEEDED {needed} and symbols to stub")
    return libs, missing


def compile_stubs(libs: list[str], symbols: list[str], out: Path) -> None:
    """One shared library per soname, each exporting every symbol as a function returning 0."""
    wanted = os.environ.get("CC")
    cc = shutil.which(wanted) if wanted else (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang"))
    if cc is None:
        raise Unavailable(f"no C compiler ({'CC=' + wanted if wanted else 'cc, gcc or clang'}) to build the stub TensorRT libraries")
    out.mkdir(parents=True, exist_ok=True)
    source = out / "trt_stub.c"
    lines = ["/* Stand-ins for TensorRT's C entry points: every one returns null / 0 / false. */"]
    for i, name in enumerate(symbols):  # asm labels: any symbol name, C or mangled C++
        lines.append(f'void *trt_stub_{i}(void) __asm__("{name}");\nvoid *trt_stub_{i}(void) {{ return 0; }}')
    source.write_text("\n".join(lines) + "\n")
    for lib in libs:
        cmd = [cc, "-shared", "-fPIC", "-O0", "-o", str(out / lib), f"-Wl,-soname,{lib}", str(source)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise Unavailable(f"{cc} could not build the stub {lib}: {done.stderr.strip()[-400:]}")


# -- a prepared release ---------------------------------------------------------------------------

SHIM = '''"""NVIDIA's front-end ``tensorrt`` package (python/packaging/frontend_sdist/tensorrt/__init__.py)."""
from tensorrt_bindings import *  # noqa: F401,F403
from tensorrt_bindings import __version__  # noqa: F401
'''
NO_LIBS_WHEEL = '''"""Empty: keeps an installed tensorrt_libs (real libraries of another version) from loading."""
'''


@dataclass(frozen=True)
class RealBindings:
    release: Release
    site: Path  # holds tensorrt_bindings/ and the tensorrt/ shim
    lib: Path  # the stub libraries
    info: dict

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(self.site), str(REPO_ROOT)])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(self.lib), env.get("LD_LIBRARY_PATH", "")) if p)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env


def prepare(release: Release) -> RealBindings:
    """Download (once), unpack and stub ``release``; raise Unavailable saying why it cannot be."""
    problem = platform_problem()
    if problem:
        raise Unavailable(problem)
    root = cache_root()
    target = root / f"{release.version}-{python_tag()}"
    ready = target / "ready.json"
    if not ready.exists():
        wheel = fetch_wheel(release.version, root / "wheels")
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=root))
        try:
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(tmp / "site")
            extension = next((tmp / "site" / "tensorrt_bindings").glob("tensorrt*.so"))
            libs, symbols = stub_plan(extension)
            compile_stubs(libs, symbols, tmp / "lib")
            (tmp / "site" / "tensorrt").mkdir()
            (tmp / "site" / "tensorrt" / "__init__.py").write_text(SHIM)
            (tmp / "site" / "tensorrt_libs").mkdir()
            (tmp / "site" / "tensorrt_libs" / "__init__.py").write_text(NO_LIBS_WHEEL)
            (tmp / "ready.json").write_text(json.dumps({"wheel": wheel.name, "libs": libs, "symbols": symbols}, indent=1))
            try:
                tmp.rename(target)
            except OSError:  # another process prepared it first
                if not ready.exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return RealBindings(release, target / "site", target / "lib", json.loads(ready.read_text()))


def selected(release: Release) -> bool:
    chosen = os.environ.get(SELECT_ENV, "").strip()
    return not chosen or release.version in {v.strip() for v in chosen.split(",")}


# -- running probes in a subprocess ---------------------------------------------------------------

def run_probe(world: str, func: str, args: list, *, env: dict[str, str], cwd: Path, timeout: int = 240) -> object:
    """``tests.trt_bindings.probes.<func>(*args)`` in a fresh interpreter; its JSON result.
    ``world`` is "real" (the bindings on PYTHONPATH) or "standin:<surface version>:<__version__>"."""
    cmd = [sys.executable, "-m", "tests.trt_bindings.probes", world, func, json.dumps(args)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False)
    marked = [ln for ln in done.stdout.splitlines() if ln.startswith(MARK)]
    if done.returncode != 0 or not marked:
        raise AssertionError(
            f"probe {func} in world {world} failed (exit {done.returncode}):\n"
            f"--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-5000:]}"
        )
    result = json.loads(marked[-1][len(MARK):])
    if isinstance(result, dict):
        result["_stderr"] = done.stderr
    return result


def standin_env() -> dict[str, str]:
    """The environment for a stand-in probe: the repository only, no bindings, no stubs."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env
