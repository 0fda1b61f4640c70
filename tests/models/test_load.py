from __future__ import annotations

import json
import os

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from rescompile.errors import ModelError
from rescompile.models.load import TORCHSCRIPT_SPEC_FILE, load_model
from rescompile.models.registry import create_model


def test_load_by_name_gives_default_spec():
    m = load_model("resnet20")
    assert m.kind == "name" and m.spec.num_classes == 10 and m.spec.input_size == 32
    m = load_model("resnet18", num_classes=5)
    assert m.spec.input_size == 224 and m.spec.preprocessing.resize == 256 and m.spec.num_classes == 5


def test_a_named_architecture_gets_the_same_weights_every_time_and_leaves_the_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, b = load_model("resnet20").module.state_dict(), load_model("resnet20").module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # two builds of `resnet20` are one model
    assert torch.equal(torch.rand(3), before)  # the caller's random stream is where it was
    c = create_model("resnet20", 10).state_dict()  # training's own initialisation is not fixed by it
    assert not torch.equal(c["fc.weight"], a["fc.weight"])


def test_load_rescompile_checkpoint_restores_weights_and_spec(trained):
    m = load_model(trained.checkpoint)
    assert m.kind == "checkpoint" and m.spec == trained.spec
    assert m.metrics["test_acc"] == pytest.approx(trained.test_acc)
    raw = torch.load(trained.checkpoint, weights_only=True)
    assert torch.equal(m.module.state_dict()["fc.weight"], raw["state_dict"]["fc.weight"])


def test_checkpoint_for_another_architecture_is_refused(trained, tmp_path):
    with pytest.raises(ModelError, match="is a resnet20 checkpoint, not resnet32"):
        load_model(trained.checkpoint, arch="resnet32")
    sd = tmp_path / "sd.pt"
    torch.save(create_model("resnet20").state_dict(), sd)
    with pytest.raises(ModelError, match="does not match architecture 'resnet32'"):
        load_model(sd, arch="resnet32")


def test_plain_state_dict_needs_arch_and_infers_classes(tmp_path):
    sd = tmp_path / "sd.pth"
    model = create_model("resnet20", 7)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, sd)
    with pytest.raises(ModelError, match="plain state dict.*--arch"):
        load_model(sd)
    m = load_model(sd, arch="resnet20")
    assert m.spec.num_classes == 7
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(m.module(x), model.eval()(x))


@pytest.mark.parametrize("wrap", ["lightning", "torch_compile", "dataparallel_compile"])
def test_state_dicts_saved_by_training_wrappers_load(tmp_path, wrap):
    """PyTorch Lightning saves the model under its attribute name ("model."), torch.compile under
    "_orig_mod.", DataParallel under "module." (here without the BN step counters, as some tools save)."""
    model = create_model("resnet20", 10).eval()
    sd = model.state_dict()
    saved = {
        "lightning": {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0", "hyper_parameters": {"lr": 0.1},
                      "state_dict": {**{f"model.{k}": v for k, v in sd.items()}, "criterion.weight": torch.ones(10)}},
        "torch_compile": {f"_orig_mod.{k}": v for k, v in sd.items()},
        "dataparallel_compile": {f"module._orig_mod.{k}": v for k, v in sd.items() if not k.endswith("num_batches_tracked")},
    }[wrap]
    path = tmp_path / f"{wrap}.ckpt"
    torch.save(saved, path)
    m = load_model(path, arch="resnet20")
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(m.module(x), model(x))


def test_a_wrapped_state_dict_missing_weights_is_still_refused(tmp_path):
    sd = create_model("resnet20", 10).state_dict()
    path = tmp_path / "partial.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items() if not k.startswith("layer3.")}}, path)
    with pytest.raises(ModelError, match="does not match architecture 'resnet20'"):
        load_model(path, arch="resnet20")


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil()}, path)
    with pytest.raises(ModelError, match="weights-only load refuses.*--trust-checkpoint"):
        load_model(path, arch="resnet20")
    assert not marker.exists()


def test_trusted_full_module_pickle_loads(tmp_path):
    path = tmp_path / "full.pt"
    torch.save(create_model("resnet20", 4), path)
    with pytest.raises(ModelError, match="weights-only"):
        load_model(path)
    m = load_model(path, trust_checkpoint=True, input_size=32)
    assert m.spec.num_classes == 4


def test_torchscript_with_and_without_spec(trained, tmp_path):
    loaded = load_model(trained.checkpoint)
    scripted = torch.jit.script(loaded.module)
    with_spec = tmp_path / "with.ts"
    torch.jit.save(scripted, str(with_spec), _extra_files={TORCHSCRIPT_SPEC_FILE: json.dumps(loaded.spec.to_dict())})
    m = load_model(with_spec)
    assert m.kind == "torchscript" and m.spec == loaded.spec
    bare = tmp_path / "bare.pt"
    torch.jit.save(torch.jit.trace(loaded.module, torch.zeros(1, 3, 32, 32)), str(bare))
    m = load_model(bare, input_size=32)
    assert m.kind == "torchscript" and m.spec.num_classes == 10 and m.spec.input_size == 32


def test_onnx_source_keeps_spec_from_metadata(trained, tmp_path):
    from rescompile.stages.export import onnx_from_torch

    src = load_model(trained.checkpoint)
    onnx_from_torch(src.module, src.spec, tmp_path / "m.onnx")
    m = load_model(tmp_path / "m.onnx")
    assert m.kind == "onnx" and m.spec == src.spec and m.module is None


def _graph(nodes, inputs, outputs, inits=()):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what ONNX Runtime 1.23 (the last for Python 3.10) reads; onnx 1.23 writes 14
    return model


def test_onnx_that_is_not_an_image_classifier_is_refused(tmp_path):
    vi = helper.make_tensor_value_info
    adder = _graph(
        [helper.make_node("Add", ["a", "b"], ["c"])],
        [vi("a", TensorProto.FLOAT, [1, 4]), vi("b", TensorProto.FLOAT, [1, 4])],
        [vi("c", TensorProto.FLOAT, [1, 4])],
    )
    onnx.save(adder, tmp_path / "add.onnx")
    with pytest.raises(ModelError, match="not a ResNet-like image classifier: it has 2 inputs"):
        load_model(tmp_path / "add.onnx")
    noconv = _graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])],
        [vi("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [vi("y", TensorProto.FLOAT, ["N", 3])],
    )
    onnx.save(noconv, tmp_path / "noconv.onnx")
    with pytest.raises(ModelError, match="it has no Conv nodes"):
        load_model(tmp_path / "noconv.onnx")


def test_truncated_and_garbage_onnx_files(trained, tmp_path):
    from rescompile.stages.export import onnx_from_torch

    src = load_model(trained.checkpoint)
    good = tmp_path / "m.onnx"
    onnx_from_torch(src.module, src.spec, good)
    data = good.read_bytes()
    (tmp_path / "trunc.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        load_model(tmp_path / "trunc.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"hello, not a model")
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        load_model(tmp_path / "junk.onnx")


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(ModelError, match="no such model file or architecture name: 'nope.pt'"):
        load_model("nope.pt")
    with pytest.raises(ModelError, match="is a directory"):
        load_model(tmp_path)


def test_garbage_checkpoint(tmp_path):
    p = tmp_path / "x.pt"
    p.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelError, match="not a readable PyTorch checkpoint"):
        load_model(p, arch="resnet20")
