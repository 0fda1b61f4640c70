"""The Triton model repository of a bundle, read back with Triton's own ModelConfig schema: a real
CPU bundle, the same manifest with an engine, bad manifests, and rewrites."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
from pathlib import Path

import pytest

from rescompile.bundle import BundleError, read_manifest
from rescompile.config import BuildConfig, CalibConfig
from rescompile.deploy.triton import DOCS, model_name, write_triton

tritonclient = pytest.importorskip("tritonclient")
text_format = pytest.importorskip("google.protobuf.text_format")

PROFILE = {"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [32, 3, 32, 32]}


def _schema():
    """tritonclient's model_config_pb2, loaded from its file: importing it as a package module needs grpcio."""
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pb = _schema()


def parse(config: Path):
    return text_format.Parse(config.read_text(), pb.ModelConfig())


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from rescompile.pipeline import build

    out = tmp_path_factory.mktemp("triton") / "resnet20-digits"
    build(BuildConfig(output_dir=out, bench=False, calib=CalibConfig(num_images=64)))
    return out


def manifest_of(bundle: Path) -> tuple[dict, dict[str, Path]]:
    m = read_manifest(bundle)
    return m.doc, {role: m.file(role) for role in m.files}


@pytest.fixture
def engine_bundle(bundle, tmp_path):
    """The real manifest with an engine and its profile, and a stand-in engine file: the writer reads no more."""
    doc, _ = manifest_of(bundle)
    doc = copy.deepcopy(doc)
    out = tmp_path / "my bundle.v2"
    out.mkdir()
    plan = out / "model.plan"
    plan.write_bytes(b"not a real engine \x00\x01" * 64)
    doc["engine"] = {"path": "model.plan", "tensorrt_version": "10.3.0", "precision": "int8", "profiles": [PROFILE]}
    doc["engine_plan"] = {**(doc.get("engine_plan") or {}), "profiles": [PROFILE]}
    return out, doc, {"engine": plan}


def check_common(cfg, doc: dict, here: Path) -> None:
    inp, out = cfg.input[0], cfg.output[0]
    assert inp.name == doc["input"]["name"] and list(inp.dims) == doc["input"]["shape"][1:]
    assert inp.data_type == pb.TYPE_FP32 and inp.format == pb.ModelInput.FORMAT_NCHW
    assert out.name == doc["output"]["name"] and list(out.dims) == doc["output"]["shape"][1:]
    assert out.data_type == pb.TYPE_FP32 and out.label_filename == "labels.txt"
    assert (here / out.label_filename).read_text().splitlines() == doc["spec"]["labels"]
    assert len(cfg.instance_group) == 1 and cfg.instance_group[0].count == 1
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
    assert cfg.name == here.name


def check_model_file(link: Path, source: Path) -> None:
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))  # relative: survives moving the bundle
    assert link.resolve() == source.resolve()
    assert link.read_bytes() == source.read_bytes()


def test_cpu_bundle_serves_the_cpu_artifact_on_onnx_runtime(bundle):
    doc, files = manifest_of(bundle)
    assert doc["engine"] is None  # no GPU here: the CPU artifact is what Triton gets
    config = write_triton(bundle, doc, files)
    here = bundle / "deploy" / "triton" / "resnet20-digits"
    assert config == here / "config.pbtxt"
    cfg = parse(config)
    profile = doc["engine_plan"]["profiles"][0]
    assert cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == profile["max"][0]
    assert list(cfg.dynamic_batching.preferred_batch_size) == sorted({profile["opt"][0], profile["max"][0]})
    assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    check_common(cfg, doc, here)
    check_model_file(here / "1" / "model.onnx", bundle / doc["cpu_artifact"]["path"])
    assert not (here / "1" / "model.plan").exists()
    text = config.read_text()
    assert DOCS in text and "tritonserver --model-repository <bundle>/deploy/triton" in text
    assert all(line.startswith("#") for line in text.split("\n\n")[0].splitlines())


def test_the_build_writes_the_triton_folder_and_its_link_survives_the_staging_move(bundle):
    config = bundle / "deploy" / "triton" / "resnet20-digits" / "config.pbtxt"
    assert parse(config).platform == "onnxruntime_onnx"
    doc = json.loads((bundle / "manifest.json").read_text())
    check_model_file(config.parent / "1" / "model.onnx", bundle / doc["cpu_artifact"]["path"])


def test_without_a_profile_the_cpu_model_batches_up_to_32(bundle, tmp_path):
    doc, files = manifest_of(bundle)
    doc = {**doc, "engine_plan": None}
    cfg = parse(write_triton(tmp_path / "b", doc, files))
    assert cfg.max_batch_size == 32 and list(cfg.dynamic_batching.preferred_batch_size) == [32]


def test_engine_bundle_serves_the_plan_on_the_gpu(engine_bundle):
    out, doc, files = engine_bundle
    config = write_triton(out, doc, files)
    here = out / "deploy" / "triton" / "my_bundle_v2"
    assert config == here / "config.pbtxt"
    cfg = parse(config)
    assert cfg.platform == "tensorrt_plan"
    assert cfg.max_batch_size == PROFILE["max"][0] == 32
    assert list(cfg.dynamic_batching.preferred_batch_size) == [PROFILE["opt"][0], PROFILE["max"][0]] == [8, 32]
    assert cfg.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    check_common(cfg, doc, here)
    check_model_file(here / "1" / "model.plan", files["engine"])
    assert "10.3.0" in config.read_text()


def test_dynamic_spatial_profile_leaves_those_dims_free(engine_bundle):
    out, doc, files = engine_bundle
    profile = {"min": [1, 3, 16, 16], "opt": [4, 3, 32, 32], "max": [16, 3, 64, 64]}
    doc["engine"]["profiles"] = [profile]
    cfg = parse(write_triton(out, doc, files))
    assert list(cfg.input[0].dims) == [3, -1, -1]
    assert cfg.max_batch_size == 16 and list(cfg.dynamic_batching.preferred_batch_size) == [4, 16]


def test_nhwc_input_is_declared_nhwc(engine_bundle):
    out, doc, files = engine_bundle
    doc["input"] = {**doc["input"], "shape": ["batch", 32, 32, 3], "layout": "nhwc"}
    cfg = parse(write_triton(out, doc, files))
    assert cfg.input[0].format == pb.ModelInput.FORMAT_NHWC and list(cfg.input[0].dims) == [32, 32, 3]


def test_no_labels_no_label_file(engine_bundle):
    out, doc, files = engine_bundle
    write_triton(out, doc, files)
    doc["spec"] = {**doc["spec"], "labels": None}
    config = write_triton(out, doc, files)
    assert parse(config).output[0].label_filename == ""
    assert not (config.parent / "labels.txt").exists()


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda d: d["input"].pop("name"), "no input tensor"),
        (lambda d: d.pop("output"), "no output tensor"),
        (lambda d: d["input"].update(dtype="complex64"), "no Triton data type"),
        (lambda d: d["engine"].pop("path"), "engine names no file"),
        (lambda d: d["engine"].update(path="gone.plan"), "missing gone.plan"),
        (lambda d: d["engine"].update(path="../outside.plan"), "leaves the bundle"),
        (lambda d: (d["engine"].pop("profiles"), d.update(engine_plan=None)), "no optimization profile"),
        (lambda d: d["engine"].update(profiles=[{"min": [1], "opt": [1], "max": ["batch"]}]), "has no batch size"),
        (lambda d: d["spec"].update(labels=["a", "b"]), "2 labels for 10 output classes"),
        (lambda d: (d.update(engine=None), d.update(cpu_artifact=None)), "no CPU artifact"),
    ],
)
def test_a_manifest_without_what_triton_needs_is_a_one_line_bundle_error(engine_bundle, edit, words):
    out, doc, files = engine_bundle
    edit(doc)
    files = {} if doc.get("engine") and doc["engine"].get("path") != "model.plan" else files
    with pytest.raises(BundleError, match=words) as info:
        write_triton(out, doc, files)
    assert "\n" not in str(info.value)
    assert not (out / "deploy" / "triton" / "my_bundle_v2" / "config.pbtxt").exists()


def test_rewriting_replaces_the_model_link(engine_bundle, bundle):
    out, doc, files = engine_bundle
    config = write_triton(out, doc, files)
    plan = config.parent / "1" / "model.plan"
    check_model_file(plan, files["engine"])
    newer = out / "model_v2.plan"
    newer.write_bytes(b"a rebuilt engine")
    doc["engine"]["path"] = newer.name
    write_triton(out, doc, {"engine": newer})
    check_model_file(plan, newer)
    assert sorted(p.name for p in plan.parent.iterdir()) == ["model.plan"]  # no temporary left behind

    # The engine gone (rebuilt without a GPU): the CPU artifact replaces the plan.
    cpu_doc, cpu_files = manifest_of(bundle)
    doc.update(engine=None, cpu_artifact=cpu_doc["cpu_artifact"])
    cfg = parse(write_triton(out, doc, cpu_files))
    assert cfg.platform == "onnxruntime_onnx"
    assert sorted(p.name for p in plan.parent.iterdir()) == ["model.onnx"]
    check_model_file(plan.parent / "model.onnx", cpu_files["cpu_int8_onnx"])


def test_a_renamed_bundle_leaves_one_model_in_the_repository(engine_bundle):
    out, doc, files = engine_bundle
    write_triton(out, doc, files, name="old name")
    mine = out / "deploy" / "triton" / "someone_elses"
    mine.mkdir()
    (mine / "config.pbtxt").write_text('name: "someone_elses"\n')
    write_triton(out, doc, files)
    assert sorted(p.name for p in (out / "deploy" / "triton").iterdir()) == ["my_bundle_v2", "someone_elses"]


def test_where_links_fail_the_model_file_is_a_copy(engine_bundle, monkeypatch):
    out, doc, files = engine_bundle

    def no_links(*_args, **_kwargs):
        raise OSError("symbolic links are not supported here")

    monkeypatch.setattr("rescompile.deploy.triton.os.symlink", no_links)
    config = write_triton(out, doc, files)
    plan = config.parent / "1" / "model.plan"
    assert plan.is_file() and not plan.is_symlink() and plan.read_bytes() == files["engine"].read_bytes()
    assert parse(config).platform == "tensorrt_plan"


def test_model_names_are_triton_safe():
    assert model_name("resnet20-digits") == "resnet20-digits"
    assert model_name("my bundle.v2") == "my_bundle_v2"
    assert model_name("résumé/../x") == "r_sum_____x"
    assert model_name("...") == "model"
