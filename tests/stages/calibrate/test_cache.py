"""TensorRT calibration cache: bit-exact round trips, TensorRT's own lines, and every malformed file."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rescompile.errors import RescompileError
from rescompile.stages.calibrate.cache import (
    ALGORITHMS,
    CacheError,
    CalibrationCache,
    cache_from_scales,
    check_cache_for,
    parse_cache,
    read_cache,
    version_code,
    version_from_code,
    write_cache,
)

ODD_NAMES = {
    "input": 0.0078125,
    "layer1.0/conv1: out [0]": 0.0123,
    "a:": 1.0,
    "x: : y": 3.5e-3,
    " spaced name ": 0.25,
    "été/Ψ-卷积\u2028": 1e-6,
    "onnx::Conv_123": 0.1,
}


def bits(x: float) -> int:
    return struct.unpack(">I", struct.pack(">f", x))[0]


def test_round_trip_is_bit_exact(tmp_path):
    path = write_cache(tmp_path / "calib.cache", ODD_NAMES, version="10.3.0")
    cache = read_cache(path)
    assert list(cache.scales) == list(ODD_NAMES)  # insertion order kept
    for name, scale in ODD_NAMES.items():
        assert cache.scales[name] == float(np.float32(scale))
        assert bits(cache.scales[name]) == bits(float(np.float32(scale)))
    assert cache.header == "TRT-100300-EntropyCalibration2"
    assert path.read_bytes().decode("utf-8") == cache.to_text()


def test_known_values():
    text = cache_from_scales({"x": 1.0}, version="8.6.1").to_text()
    assert text == "TRT-8601-EntropyCalibration2\nx: 3f800000\n"
    # A line as TensorRT writes it: 0x3c010a14 is the float32 nearest 0.00787..., amax ~ 1.0.
    cache = parse_cache("TRT-8601-EntropyCalibration2\ninput: 3c010a14\n")
    expected = struct.unpack(">f", bytes.fromhex("3c010a14"))[0]
    assert cache.scales["input"] == expected == float(np.float32(expected))
    assert cache.amax("input") == pytest.approx(expected * 127)
    assert cache.version == "8.6.1"


def test_short_hex_crlf_blank_lines_and_uppercase():
    text = "TRT-100300-MinMaxCalibration\r\n\r\na: 1\r\nb: 3F800000\r\n\n"
    cache = parse_cache(text)
    assert bits(cache.scales["a"]) == 1  # smallest subnormal, left-padded
    assert cache.scales["b"] == 1.0
    assert cache.algorithm == "MinMaxCalibration"
    assert parse_cache("TRT-100300-EntropyCalibration2\na: 3f800000").scales == {"a": 1.0}  # no final newline


def test_writer_uses_eight_lower_case_digits():
    text = cache_from_scales({"t": 2.0**-140, "u": 0.1}).to_text()
    assert text.splitlines()[1:] == ["t: 00000200", "u: 3dcccccd"]


@pytest.mark.parametrize(
    ("version", "code"),
    [("8.6.1", 8601), ("8.5", 8500), ("7.2.3", 7203), ("10.3.0", 100300), ("10.14.1", 101401), ("11.0", 110000), ("8.6.1.6", 8601),
     ("10.7.0.post1", 100700), ("10.13.3.9.post1", 101303)],  # what the real 10.7 and 10.13 bindings report
)
def test_version_codes(version, code):
    assert version_code(version) == code
    assert version_code(version_from_code(code)) == code


def test_version_from_code():
    assert version_from_code("8601") == "8.6.1"
    assert version_from_code(100300) == "10.3.0"
    assert version_from_code(101401) == "10.14.1"


@pytest.mark.parametrize("bad", ["", "10", "ten", "8.10.0", "0.1.0", "10.3.0-rc1", "v10.3", "10.3.100", "٨.٦.١", "1e3"])
def test_bad_version_strings(bad):
    with pytest.raises(CacheError, match="not a TensorRT version") as err:
        version_code(bad)
    assert "10.3.0" in str(err.value)


@pytest.mark.parametrize("bad", [0, 999, 12345, -8601, True, "86a1", 8.6])
def test_bad_version_codes(bad):
    with pytest.raises(CacheError):
        version_from_code(bad)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_headers_for_8x_and_10x(algorithm):
    assert cache_from_scales({"x": 1.0}, version="8.6.1", algorithm=algorithm).header == f"TRT-8601-{algorithm}"
    assert cache_from_scales({"x": 1.0}, version="10.14.1", algorithm=algorithm).header == f"TRT-101401-{algorithm}"


@pytest.mark.parametrize(
    ("scales", "kwargs", "match"),
    [
        ({"a\nb": 1.0}, {}, "line break"),
        ({"a\rb": 1.0}, {}, "line break"),
        ({"a\x00": 1.0}, {}, "NUL"),
        ({"": 1.0}, {}, "empty"),
        ({"\ud800": 1.0}, {}, "UTF-8"),
        ({"conv": 0.0}, {}, "'conv'"),
        ({"conv": -1.0}, {}, "'conv'"),
        ({"conv": float("nan")}, {}, "'conv'"),
        ({"conv": float("inf")}, {}, "'conv'"),
        ({"conv": 1e39}, {}, "'conv'"),  # overflows float32
        ({"conv": 1e-50}, {}, "'conv'"),  # rounds to float32 zero
        ({"conv": "1.0"}, {}, "not a number"),
        ({"conv": True}, {}, "not a number"),
        ({}, {}, "no tensor scales"),
        ({"x": 1.0}, {"algorithm": "Percentile"}, "unknown calibration algorithm"),
        ({"x": 1.0}, {"version": "latest"}, "not a TensorRT version"),
    ],
)
def test_write_refuses(tmp_path, scales, kwargs, match):
    target = tmp_path / "c.cache"
    with pytest.raises(CacheError, match=match):
        write_cache(target, scales, **kwargs)
    assert not target.exists() and not list(tmp_path.iterdir())


def test_write_error_is_cache_error(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(CacheError, match="cannot write"):
        write_cache(tmp_path / "dir", {"x": 1.0})


H = "TRT-100300-EntropyCalibration2\n"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("\n\r\n  \n", "empty"),
        ("x: 3f800000\n", "header"),
        ("TRT-100300-EntropyCalibration2 \nx: 3f800000\n", "header"),
        ("\ufeffTRT-100300-EntropyCalibration2\nx: 3f800000\n", "header"),
        ("TRT--EntropyCalibration2\nx: 3f800000\n", "header"),
        ("TRT-١٠٠٣٠٠-EntropyCalibration2\nx: 3f800000\n", "header"),
        ("TRT-100300-PercentileCalibration\nx: 3f800000\n", "unknown calibration algorithm"),
        ("TRT-50000-EntropyCalibration2\nx: 3f800000\n", "version code"),
        ("TRT-99999999999-EntropyCalibration2\nx: 3f800000\n", "header"),
        (H, "no tensor scales"),
        (H + "x 3f800000\n", "line 2"),
        (H + "x:3f800000\n", "line 2"),
        (H + "x: \n", "line 2"),
        (H + ": 3f800000\n", "empty"),
        (H + "x: 3g800000\n", "not a hex"),
        (H + "x: 0x3f8000\n", "not a hex"),
        (H + "x: 3f800000 \n", "not a hex"),
        (H + "x: ３f800000\n", "not a hex"),
        (H + "x: 03f800000\n", "more than 8"),
        (H + "x: 7fc00000\n", "finite and > 0"),  # NaN
        (H + "x: 7f800000\n", "finite and > 0"),  # +inf
        (H + "x: bf800000\n", "finite and > 0"),  # -1.0
        (H + "x: 80000000\n", "finite and > 0"),  # -0.0
        (H + "x: 0\n", "finite and > 0"),
        (H + "x: 3f800000\ny: 3f800000\nx: 40000000\n", "line 4.*twice"),
        (H + "a\x00b: 3f800000\n", "NUL"),
        (H + "a\rb: 3f800000\n", "line break"),
        (H + "x: 3f800000\ny: 3f80", "truncated"),
        (H + "x: 3f800000\ny", "line 3"),
    ],
)
def test_parse_refuses(text, match):
    with pytest.raises(CacheError, match=match):
        parse_cache(text, source="c.cache")


def test_parse_refuses_bytes():
    with pytest.raises(CacheError, match="read_cache"):
        parse_cache(b"TRT-100300-EntropyCalibration2\nx: 3f800000\n")  # type: ignore[arg-type]


def test_read_refuses(tmp_path, monkeypatch):
    with pytest.raises(CacheError, match="no calibration cache"):
        read_cache(tmp_path / "missing.cache")
    with pytest.raises(CacheError, match="no calibration cache"):
        read_cache(tmp_path)
    garbage = tmp_path / "engine.plan"
    garbage.write_bytes(b"ftrt\x00\xff\xfe\x80" * 100)
    with pytest.raises(CacheError, match="not UTF-8"):
        read_cache(garbage)
    nul = tmp_path / "nul.cache"
    nul.write_bytes(b"\x00" * 64)
    with pytest.raises(CacheError, match="header"):
        read_cache(nul)
    big = tmp_path / "big.cache"
    with open(big, "wb") as fh:  # sparse: the size is there without writing 64 MiB
        fh.truncate((64 << 20) + 1)
    reads = []
    monkeypatch.setattr("builtins.open", lambda *a, **k: reads.append(a) or pytest.fail("read a huge file"))
    with pytest.raises(CacheError, match="64 MiB"):
        read_cache(big)
    assert not reads


def test_cache_is_validated_and_frozen():
    with pytest.raises(CacheError):
        CalibrationCache(100300, "EntropyCalibration2", {"x": -1.0})
    with pytest.raises(CacheError):
        CalibrationCache("100300", "EntropyCalibration2", {"x": 1.0})  # type: ignore[arg-type]
    cache = CalibrationCache(100300, "EntropyCalibration2", {"x": 0.1})
    assert cache.scales["x"] == float(np.float32(0.1))  # stored as float32, as it will be read back
    with pytest.raises(AttributeError):
        cache.algorithm = "MinMaxCalibration"  # type: ignore[misc]
    with pytest.raises(CacheError, match="no tensor 'y'"):
        cache.amax("y")


CACHE = cache_from_scales({"input": 0.01, "conv1": 0.02, "add_1": 0.03}, version="10.3.0")


def test_version_mismatch_is_an_error():
    with pytest.raises(CacheError) as err:
        check_cache_for(CACHE, trt_version="8.6.1", tensor_names=None)
    msg = str(err.value)
    assert "TensorRT 10.3.0" in msg and "TensorRT 8.6.1" in msg and "silently calibrate again" in msg
    assert "--trt-version 8.6.1" in msg and "\n" not in msg
    assert check_cache_for(CACHE, trt_version="10.3.0", tensor_names=None) == []
    assert check_cache_for(CACHE, trt_version="10.3.0.26", tensor_names=None) == []  # build number ignored


def test_unknown_names_are_an_error():
    other = cache_from_scales({f"t{i}": 0.1 for i in range(8)})
    with pytest.raises(CacheError) as err:
        check_cache_for(other, trt_version=None, tensor_names=["t0", "x"])
    msg = str(err.value)
    assert "7 tensor(s)" in msg and "'t1'" in msg and "'t5'" in msg and "'t6'" not in msg and "2 more" in msg
    assert "another model" in msg
    with pytest.raises(CacheError, match="not one string"):
        check_cache_for(CACHE, trt_version=None, tensor_names="input")


def test_missing_names_are_warnings():
    warnings = check_cache_for(CACHE, trt_version="10.3.0", tensor_names=["input", "conv1", "add_1", "fc", "pool"])
    assert len(warnings) == 2
    assert "'fc'" in warnings[0] and "'pool'" in warnings[1] and "no INT8 scale" in warnings[0]
    assert check_cache_for(CACHE, trt_version=None, tensor_names={"input", "conv1", "add_1"}) == []


def test_cache_error_is_a_rescompile_error():
    assert issubclass(CacheError, RescompileError)


names = st.text(st.characters(codec="utf-8", exclude_characters="\n\r\x00"), min_size=1, max_size=30)
scales32 = st.floats(min_value=0.0, exclude_min=True, allow_infinity=False, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    scales=st.dictionaries(names, scales32, min_size=1, max_size=12),
    version=st.sampled_from(["8.6.1", "10.3.0", "10.14.1", "11.0"]),
    algorithm=st.sampled_from(ALGORITHMS),
)
def test_property_round_trip(tmp_path, scales, version, algorithm):
    cache = read_cache(write_cache(tmp_path / "p.cache", scales, version=version, algorithm=algorithm))
    assert list(cache.scales) == list(scales)
    assert [bits(v) for v in cache.scales.values()] == [bits(v) for v in scales.values()]
    assert all(cache.scales[n] == np.float32(v) for n, v in scales.items())
    assert (cache.version_code, cache.algorithm) == (version_code(version), algorithm)
    assert parse_cache(cache.to_text()) == cache


# Mostly a valid header and well-formed lines among damaged ones, so the fuzzing reaches the
# line parser (pure random text almost never gets past the header).
_headers = st.sampled_from(["TRT-8601-EntropyCalibration2\n", "TRT-100300-MinMaxCalibration\r\n", "TRT-1\n", ""])
_fragments = st.sampled_from(
    ["x", ": ", ":", " ", "\r", "3f800000", "3c010a14", "7fc00000", "ff", "0", "g", "\x00", "\u2028", "é", "0123456789"]
)  # fmt: skip
_good_line = st.tuples(st.text(min_size=1, max_size=5), st.text("0123456789abcdefABCDEF", min_size=1, max_size=9))
_line = st.one_of(
    _good_line.map(": ".join),
    st.lists(st.one_of(_fragments, st.text(max_size=3)), max_size=8).map("".join),
)
_body = st.tuples(st.lists(_line, max_size=6).map("\n".join), st.sampled_from(["", "\n", "\r\n"])).map("".join)
structured = st.tuples(_headers, _body).map("".join)

@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), structured))
def test_property_parse_raises_only_cache_error(text):
    try:
        cache = parse_cache(text)
    except CacheError:
        return
    assert parse_cache(cache.to_text()) == cache  # what parses, re-writes to the same thing


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=200), structured.map(lambda s: s.encode("utf-8", "surrogatepass"))))
def test_property_read_raises_only_cache_error(tmp_path, data):
    path = tmp_path / "fuzz.cache"
    path.write_bytes(data)
    try:
        read_cache(path)
    except CacheError:
        pass
