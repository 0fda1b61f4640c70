"""Reading bundles: manifest checks, safe path resolution, sha256/size verification."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rescompile._io import sha256_file
from rescompile.bundle import (
    MANIFEST, MAX_MANIFEST_BYTES, BundleError, file_problems, read_manifest, resolve_inside, verify,
)
from rescompile.data.preprocess import Preprocessing
from rescompile.errors import RescompileError
from rescompile.models.spec import ModelSpec

DIGIT_LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPEC = ModelSpec("resnet20", 10, Preprocessing(32), DIGIT_LABELS, {}, "digits")


def write_manifest(bundle: Path, files: dict[str, str], *, version: int = 2, spec: ModelSpec = SPEC, **extra) -> dict:
    """A manifest.json following the bundle schema, with the real sha256 and size of ``files``
    (role -> file name inside ``bundle``). ``extra`` adds or replaces top-level keys."""
    doc = {
        "format": "rescompile.bundle",
        "format_version": version,
        "rescompile_version": "0.1.0",
        "created": "2025-01-01T00:00:00+00:00",
        "model": {"source": "resnet20", "kind": "name", "metrics": {}},
        "spec": spec.to_dict(),
        "precision": "int8",
        "calibration": None,
        "files": {
            role: {"path": name, "sha256": sha256_file(bundle / name), "bytes": (bundle / name).stat().st_size}
            for role, name in files.items()
        },
        "versions": {},
        "machine": {},
    }
    if version >= 2:
        doc.update({
            "input": {"name": "input", "shape": ["batch", *spec.input_shape], "dtype": "float32"},
            "output": {"name": "logits", "shape": ["batch", spec.num_classes], "dtype": "float32"},
            "engine": None,
            "cpu_artifact": None,
            "nvidia": {"tensorrt": None, "gpu": None},
        })
    doc.update(extra)
    (bundle / MANIFEST).write_text(json.dumps(doc, indent=2))
    return doc


@pytest.fixture
def bundle(tmp_path) -> Path:
    d = tmp_path / "bundle"
    d.mkdir()
    (d / "model_fp32.onnx").write_bytes(b"fp32 model bytes" * 100)
    (d / "scales.json").write_text('{"input": 0.1}')
    write_manifest(d, {"fp32_onnx": "model_fp32.onnx", "scales": "scales.json"})
    return d


def rewrite(bundle: Path, edit) -> None:
    doc = json.loads((bundle / MANIFEST).read_text())
    edit(doc)
    (bundle / MANIFEST).write_text(json.dumps(doc))


def test_reads_a_valid_bundle(bundle):
    m = read_manifest(bundle)
    assert m.format_version == 2 and m.dir == bundle
    assert m.spec == SPEC and m.spec.label(7) == "seven"
    assert set(m.files) == {"fp32_onnx", "scales"}
    assert m.file("fp32_onnx") == (bundle / "model_fp32.onnx").resolve()
    assert m.input["name"] == "input" and m.output["shape"] == ["batch", 10]
    assert m.engine is None and m.cpu_artifact is None
    assert verify(m) == ["fp32_onnx", "scales"]
    # the manifest file itself is accepted too
    assert read_manifest(bundle / MANIFEST).files == m.files


def test_reads_format_version_1(tmp_path):
    (tmp_path / "model_opt.onnx").write_bytes(b"x")
    write_manifest(tmp_path, {"optimized_onnx": "model_opt.onnx"}, version=1)
    m = read_manifest(tmp_path)
    assert m.format_version == 1 and m.engine is None and m.cpu_artifact is None and m.input is None
    assert m.file("optimized_onnx").read_bytes() == b"x"


def expect(path, *words):
    with pytest.raises(BundleError) as info:
        read_manifest(path)
    msg = str(info.value)
    assert "\n" not in msg
    for word in words:
        assert word in msg, msg
    return msg


def test_missing_directory_and_missing_manifest(tmp_path):
    expect(tmp_path / "nope", "no bundle directory", "rescompile build")
    expect(tmp_path, "has no manifest.json", "not a rescompile bundle")


def test_not_json_and_not_an_object(bundle):
    (bundle / MANIFEST).write_text('{"format": "rescompile.bundle", ')
    expect(bundle, "not valid JSON")
    (bundle / MANIFEST).write_bytes(b"\xff\xfe\x00garbage")
    expect(bundle, "not valid JSON")
    (bundle / MANIFEST).write_text("[1, 2]")
    expect(bundle, "JSON list, not an object")
    (bundle / MANIFEST).write_text("[" * 100_000 + "]" * 100_000)  # deep nesting: RecursionError in json
    expect(bundle, "not valid JSON")


def test_wrong_format_and_versions(bundle):
    rewrite(bundle, lambda d: d.update(format="something.else"))
    expect(bundle, "not a rescompile bundle manifest", "something.else")
    rewrite(bundle, lambda d: d.update(format="rescompile.bundle", format_version=3))
    expect(bundle, "format_version 3", "newer", "Upgrade rescompile")
    for bad in ("2", 0, True, None, 2.0):
        rewrite(bundle, lambda d: d.update(format_version=bad))
        expect(bundle, "format_version")


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda d: d.pop("spec"), ["required key spec"]),
        (lambda d: d.pop("files"), ["required key files"]),
        (lambda d: d.update(files=[]), ["files has type list"]),
        (lambda d: d.update(spec="resnet20"), ["spec has type str"]),
        (lambda d: d["spec"].pop("num_classes"), ["malformed spec"]),
        (lambda d: d["spec"].update(preprocessing=None), ["malformed spec"]),
        (lambda d: d["spec"]["preprocessing"].update(mean=[0.5]), ["malformed spec"]),
        (lambda d: d["files"]["scales"].pop("sha256"), ["files.scales.sha256"]),
        (lambda d: d["files"]["scales"].update(sha256="abc"), ["not a hex sha256"]),
        (lambda d: d["files"]["scales"].update(bytes="12"), ["files.scales.bytes has type str"]),
        (lambda d: d["files"]["scales"].update(bytes=True), ["files.scales.bytes has type bool"]),
        (lambda d: d["files"]["scales"].update(bytes=-1), ["negative"]),
        (lambda d: d["files"]["scales"].update(path=7), ["files.scales.path has type int"]),
        (lambda d: d["files"].update(scales="scales.json"), ["files.scales has type str"]),
        (lambda d: d.update(engine="model.engine"), ["engine has type str"]),
        (lambda d: d.update(engine={"tensorrt_version": "10.3.0"}), ["engine.path"]),
        (lambda d: d.update(cpu_artifact={"path": None}), ["cpu_artifact.path"]),
        (lambda d: d.update(input={"shape": [1]}), ["input.name"]),
        (lambda d: d.update(precision=8), ["precision has type int"]),
    ],
)
def test_malformed_manifests_raise_bundle_error_not_key_or_type_error(bundle, edit, words):
    rewrite(bundle, edit)
    expect(bundle, *words)


def test_oversize_manifest_is_refused_before_reading(bundle, monkeypatch):
    with open(bundle / MANIFEST, "r+b") as fh:  # sparse: no 16 MiB written to disk
        fh.truncate(MAX_MANIFEST_BYTES + 1)
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    expect(bundle, "over the", "byte limit")
    assert not opened, "the oversize manifest must not be opened"


@pytest.mark.parametrize("bad", ["../secret.onnx", "sub/../../secret.onnx", "..\\secret.onnx"])
def test_parent_paths_are_refused(bundle, bad):
    (bundle.parent / "secret.onnx").write_bytes(b"outside")
    rewrite(bundle, lambda d: d["files"]["fp32_onnx"].update(path=bad))
    m = read_manifest(bundle)
    with pytest.raises(BundleError, match=r"leaves the bundle directory"):
        m.file("fp32_onnx")


@pytest.mark.parametrize("bad", ["/etc/passwd", "C:\\Windows\\win.ini", "\\\\server\\share\\m.onnx"])
def test_absolute_paths_are_refused(bundle, bad):
    rewrite(bundle, lambda d: d["files"]["fp32_onnx"].update(path=bad))
    with pytest.raises(BundleError, match="absolute path"):
        read_manifest(bundle).file("fp32_onnx")


def test_symlink_escaping_the_bundle_is_refused(bundle):
    outside = bundle.parent / "outside.onnx"
    outside.write_bytes(b"fp32 model bytes" * 100)  # same bytes: only the location is wrong
    (bundle / "model_fp32.onnx").unlink()
    os.symlink(outside, bundle / "model_fp32.onnx")
    m = read_manifest(bundle)
    with pytest.raises(BundleError, match="outside the bundle directory"):
        m.file("fp32_onnx")
    with pytest.raises(BundleError, match="outside the bundle directory"):
        verify(m)


def test_symlink_inside_the_bundle_is_fine(bundle):
    (bundle / "real").mkdir()
    os.replace(bundle / "scales.json", bundle / "real" / "scales.json")
    os.symlink(Path("real") / "scales.json", bundle / "scales.json")
    m = read_manifest(bundle)
    assert m.file("scales") == (bundle / "real" / "scales.json").resolve()
    assert verify(m, ["scales"]) == ["scales"]


def test_dangling_link_directory_and_missing_file(bundle):
    os.symlink(bundle / "gone", bundle / "dangling.onnx")
    (bundle / "adir").mkdir()
    m = read_manifest(bundle)
    with pytest.raises(BundleError, match="broken link"):
        resolve_inside(bundle, "dangling.onnx")
    with pytest.raises(BundleError, match="not a regular file"):
        resolve_inside(bundle, "adir")
    (bundle / "scales.json").unlink()
    with pytest.raises(BundleError, match="missing scales.json"):
        m.file("scales")
    with pytest.raises(BundleError, match="no 'engine' file .*it has: fp32_onnx, scales"):
        m.file("engine")


def test_verify_catches_sha_and_size_mismatches(bundle):
    m = read_manifest(bundle)
    (bundle / "scales.json").write_text('{"input": 0.2}')  # same size, other bytes
    assert file_problems(m, ["fp32_onnx"]) == []
    problems = file_problems(m)
    assert len(problems) == 1 and "scales.json (scales) has sha256" in problems[0]
    with pytest.raises(BundleError, match="does not match its manifest.*scales.json"):
        verify(m)
    (bundle / "model_fp32.onnx").write_bytes(b"short")
    msg = "; ".join(file_problems(m))
    assert "model_fp32.onnx (fp32_onnx) is 5 bytes, the manifest says 1600" in msg
    assert verify(read_manifest(bundle), []) == []
    with pytest.raises(BundleError, match="no 'engine' file in the manifest"):
        verify(m, ["engine"])


def test_size_is_checked_before_hashing(bundle, monkeypatch):
    import rescompile.bundle as bundle_module

    m = read_manifest(bundle)
    (bundle / "model_fp32.onnx").write_bytes(b"a different length")
    hashed = []
    monkeypatch.setattr(bundle_module, "_sha256", lambda p: hashed.append(p) or "0" * 64)
    assert file_problems(m, ["fp32_onnx"]) and not hashed


def test_bundle_error_is_a_rescompile_error():
    assert issubclass(BundleError, RescompileError)
