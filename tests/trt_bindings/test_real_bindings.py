"""rescompile and the stand-ins against NVIDIA's real TensorRT Python bindings.

tests/trt_api runs everything against stand-in modules generated from a surface table read from
NVIDIA's sources. Here the same table, the stand-ins, and rescompile's code that runs before a
Builder exists meet the compiled bindings of each supported release (bindings.RELEASES), imported
over stub libraries in a subprocess per call: a name the table gets wrong, a kind that differs
(read-only vs read-write, method vs property), an enum value, a calibrator return type the real
pybind trampoline would refuse, or a version string rescompile cannot parse fails here.
"""

from __future__ import annotations

import re

import pytest

from tests.trt_api import standin
from tests.trt_api.surface import ENUM_INTS, POLYGRAPHY_TOUCHES, RESCOMPILE_TOUCHES, ROWS
from tests.trt_bindings.bindings import RELEASES, Release
from tests.trt_bindings.surface_check import (
    calls_only_the_standin_accepts, expected_kinds, standin_offers_too_much, standin_signatures, surface_mismatches,
    touched_paths,
)

ALL_PATHS = sorted({path for path, *_ in ROWS})
TOUCHED = touched_paths(POLYGRAPHY_TOUCHES, RESCOMPILE_TOUCHES)
TEN = [r for r in RELEASES if r.version.startswith("10.")]
ELEVEN = [r for r in RELEASES if r.version.startswith("11.")]
BASES = {"EntropyCalibration2": "IInt8EntropyCalibrator2", "EntropyCalibration": "IInt8EntropyCalibrator",
         "MinMaxCalibration": "IInt8MinMaxCalibrator", "LegacyCalibration": "IInt8LegacyCalibrator"}


def each(releases: list[Release] | tuple[Release, ...]):
    return pytest.mark.parametrize("release", releases, ids=[r.version for r in releases])


def checked_paths(release: Release) -> set[str] | None:
    """None (every row) for a release surface.py describes; else the touched rows its nearest
    surface version has."""
    if release.exact:
        return None
    kinds = expected_kinds(ROWS, release.surface)
    return {p for p in TOUCHED if kinds.get(p) is not None}


def listing(problems: list[str]) -> str:
    return "\n  " + "\n  ".join(problems)


# -- the surface table and the stand-ins ----------------------------------------------------------

@each(RELEASES)
def test_surface_rows_match_the_real_bindings(release, trt_bindings):
    observed = trt_bindings.probe(release, "observe", ALL_PATHS)
    assert observed["version"] == release.version
    assert observed["file"].endswith("tensorrt/__init__.py")  # imported as `tensorrt`, through the shim
    ints = ENUM_INTS.get(release.surface, {}) if release.exact else {}
    problems = surface_mismatches(ROWS, ints, release.surface, observed, only=checked_paths(release), absent_too=release.exact)
    assert not problems, f"surface.py ({release.surface}) against real TensorRT {release.version}:{listing(problems)}"


@each(RELEASES)
def test_standin_offers_nothing_the_real_bindings_lack(release, trt_bindings):
    observed = trt_bindings.probe(release, "observe", ALL_PATHS)
    paths = checked_paths(release) or set(ALL_PATHS)
    problems = standin_offers_too_much(standin.make_tensorrt(release.surface), observed, paths)
    assert not problems, f"stand-in {release.surface} against real TensorRT {release.version}:{listing(problems)}"


def _wrong_rows(surface: str) -> tuple[list[tuple], dict[str, int], set[str]]:
    """A copy of the rows and values with one mistake of each kind, and the paths they concern."""
    rows = []
    for path, kind, versions, source in ROWS:
        if path == "IBuilderConfig.set_memory_pool_limit":  # misspelled
            path = "IBuilderConfig.set_memory_pool_limt"
        elif path == "Runtime.num_DLA_cores":  # read-only listed as read-write
            kind = "property"
        elif path == "Builder.build_engine":  # absent everywhere, listed present
            versions = (*versions, surface)
        elif path == "IBuilderConfig.set_flag":  # present, listed absent
            versions = tuple(v for v in versions if v != surface)
        elif path == "MemoryPoolType.TACTIC_DRAM":  # a member of a complete enum left out
            continue
        rows.append((path, kind, versions, source))
    subjects = {"IBuilderConfig.set_memory_pool_limt", "Runtime.num_DLA_cores", "Builder.build_engine",
                "IBuilderConfig.set_flag", "MemoryPoolType", "BuilderFlag.GPU_FALLBACK"}
    ints = dict(ENUM_INTS[surface])
    ints["BuilderFlag.GPU_FALLBACK"] += 1  # a wrong enum value
    return rows, ints, subjects


def test_a_wrong_row_makes_the_checks_fail(trt_bindings, monkeypatch):
    """The checks cannot pass vacuously: each planted mistake is reported, and nothing else is."""
    release = next((r for r in RELEASES if r.exact and _available(trt_bindings, r)), None)
    if release is None:
        pytest.skip("no release that surface.py describes row by row could be prepared here")
    rows, ints, subjects = _wrong_rows(release.surface)
    paths = sorted({p for p, *_ in rows})
    observed = trt_bindings.probe(release, "observe", paths)
    baseline = surface_mismatches(ROWS, ENUM_INTS[release.surface], release.surface, trt_bindings.probe(release, "observe", ALL_PATHS))
    planted = [p for p in surface_mismatches(rows, ints, release.surface, observed) if p not in baseline]
    assert {p.split(":")[0] for p in planted} == subjects, listing(planted)
    # The stand-in made from the wrong rows offers what the real module lacks, or as another kind.
    monkeypatch.setattr(standin, "ROWS", rows)
    offered = standin_offers_too_much(standin.make_tensorrt(release.surface), observed, set(paths))
    assert {p.split(":")[0] for p in offered} == {"IBuilderConfig.set_memory_pool_limt", "Runtime.num_DLA_cores",
                                                   "Builder.build_engine"}, listing(offered)


def _available(trt_bindings, release: Release) -> bool:
    try:
        trt_bindings.get(release)
    except pytest.skip.Exception:
        return False
    return True


# -- the calibrator on the real pybind trampolines ------------------------------------------------

@each(TEN)
def test_cache_calibrator_on_the_real_trampolines(release, trt_bindings):
    result = trt_bindings.probe(release, "trampolines")
    ints = ENUM_INTS.get(release.surface, {})
    for algorithm, r in result["calibrators"].items():
        assert r["made"] == BASES[algorithm], r
        expected = r["expected_algorithm"]
        assert r["get_batch_size via trampoline"] == 1, f"{algorithm}: the trampoline could not cast get_batch_size()"
        member = f"CalibrationAlgoType.{expected}={ints[f'CalibrationAlgoType.{expected}']}"
        assert r["get_algorithm via C++"] == r["get_algorithm"] == member, r
        assert r["get_batch castable"] is True, f"{algorithm}: get_batch must return None or a list of device pointers"
        assert r["read_calibration_cache is a buffer"] is True, f"{algorithm}: {r['read_calibration_cache is a buffer']}"
        assert r["write_calibration_cache(memoryview)"] is None
        if algorithm == "LegacyCalibration":
            assert r["legacy returns"] == ["float", "float", None, None]
    # A calibrator without get_batch_size: the real trampoline reports a pure virtual call (the
    # surface's 'abstract'), and only that call failed: rescompile's overrides all cast cleanly.
    assert result["bare get_batch_size via trampoline"] == -1
    caught = [ln for ln in result["_stderr"].splitlines() if "Exception caught" in ln or "not overriden" in ln]
    assert len(caught) == 1 and "pure virtual" in caught[0], result["_stderr"][-2000:]


def test_the_trampoline_checks_catch_wrong_return_types(trt_bindings):
    """The calibrator checks cannot pass vacuously: a calibrator returning a str batch size, names
    instead of device pointers and a str cache fails each of them on the real trampoline."""
    release = next((r for r in TEN if _available(trt_bindings, r)), None)
    if release is None:
        pytest.skip("no TensorRT 10 bindings could be prepared here")
    r = trt_bindings.probe(release, "trampolines", True)["calibrators"]["EntropyCalibration2"]
    assert r["get_batch_size via trampoline"] == -1
    assert r["get_batch castable"] is False
    assert str(r["read_calibration_cache is a buffer"]).startswith("raised TypeError")


@each(ELEVEN)
def test_eleven_has_no_implicit_calibration(release, trt_bindings):
    result = trt_bindings.probe(release, "trampolines")
    assert not any(result["present"].values()), result["present"]
    for algorithm, r in result["calibrators"].items():
        assert r["made"] == "raised AttributeError", (algorithm, r)


# -- rescompile before a Builder exists -----------------------------------------------------------

def _flatten(value, prefix=""):
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key != "_stderr":
                out.update(_flatten(item, f"{prefix}{key} / "))
        return out
    return {prefix.rstrip(" /"): value}


@each(RELEASES)
def test_prebuilder_code_answers_as_with_the_standin(release, trt_bindings):
    """Version checks, plan checks, settings_for's enum lookups, loggers, nptype and the cache
    calibrator give the same answers with the real module as with the stand-in of the matching
    surface version (reporting the real __version__, so only the bindings differ)."""
    names = sorted(p.split(".")[1] for p, k in expected_kinds(ROWS, release.surface).items()
                   if k == "value" and p.startswith("DataType."))
    real = _flatten(trt_bindings.probe(release, "prebuilder", names))
    fake = _flatten(trt_bindings.standin_probe(release, "prebuilder", names))
    differ = [f"{key}: real {real.get(key)!r}, stand-in {fake.get(key)!r}"
              for key in sorted(set(real) | set(fake)) if real.get(key) != fake.get(key)]
    assert not differ, f"real TensorRT {release.version} vs stand-in {release.surface}:{listing(differ)}"


@each(RELEASES)
def test_rescompile_reads_the_real_version_string(release, trt_bindings, tmp_path):
    result = trt_bindings.probe(release, "versions", str(tmp_path))
    mmp = [int(x) for x in re.match(r"(\d+)\.(\d+)\.(\d+)", release.version).groups()]
    code = mmp[0] * 10000 + mmp[1] * 100 + mmp[2]
    expected = {"__version__": release.version, "nvidia.tensorrt_version": release.version, "nvidia.major": mmp[0],
                "compat.parse_version": mmp, "plan._version": mmp, "polygraphy >= 10.0": True, "cache.version_code": code}
    if mmp[0] == 10:
        expected["_cache_text header"] = f"TRT-{code}-EntropyCalibration2"
    assert {k: result.get(k) for k in expected} == expected


@each(RELEASES)
def test_the_loader_chain_gets_as_far_as_the_builder(release, trt_bindings, tmp_path):
    """Polygraphy's import and version checks, rescompile's calibrator and the whole chain run on
    the real module; the first failure is creating the Builder (a stub library returns null)."""
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"")  # never read: the Builder comes first
    result = trt_bindings.probe(release, "polygraphy_chain", str(onnx))
    assert "factory function returned nullptr" in result["build"], result
    assert "trt.Builder(" in result["first failure at"], result
    assert result["calibrator set"] == ("CacheCalibrator" if release.version.startswith("10.") else None)
    assert result["dla_cores"] is None


@each([r for r in RELEASES if r.exact])
def test_standin_methods_accept_no_call_the_real_ones_refuse(release, trt_bindings):
    """The simulated machine's methods that rescompile and Polygraphy call take the real
    parameters, by the real names (pybind binds keyword arguments by name)."""
    from tests.trt_api.machine import Machine, tensorrt_for

    kinds = expected_kinds(ROWS, release.surface)
    paths = {p for p in TOUCHED if kinds.get(p) == "method"}
    fake = standin_signatures(tensorrt_for(Machine(release.surface)), paths)
    real = trt_bindings.probe(release, "methods", sorted(fake))
    problems = calls_only_the_standin_accepts(fake, real)
    assert not problems, f"stand-in {release.surface} against real TensorRT {release.version}:{listing(problems)}"
