"""The ResNet family as other code bases write it, each trained for real on scikit-learn's digits.

Every member is a small (3x32x32, 8-64 channels) seeded network in the shape its family's
reference code gives it, trained briefly on the digits with normalisation outside the graph (as
torchvision and timm models are exported), and exported as its users export it:

- se_resnet: timm's SE-ResNet block (squeeze-excitation after the last BN, before the Add:
  ReduceMean -> 1x1 conv -> ReLU -> 1x1 conv -> Sigmoid -> Mul), exported by the dynamo exporter
  where this PyTorch has it (timm seresnet18 users do), else the TorchScript one;
- preact_resnet: ResNetV2 (He et al. 2016, "Identity Mappings"): BN-ReLU before each conv, the
  projection reads the pre-activated tensor, no ReLU after the Add, a final BN-ReLU;
- resnext: bottlenecks whose 3x3 conv is grouped (cardinality 4);
- wide_resnet: a wide bottleneck (wide_resnet50_2's 2x wider middle) at 32 px;
- resnet_d: timm's ResNet-D: a deep 3-conv stem and an average-pool + 1x1 conv shortcut.

A member's Foreign.blocks is the number of residual Adds in its definition, counted from the
module, not from the exported graph.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tests.foreign.corpus import CHW, NUM_CLASSES, Foreign, _digits_images, fit_on_digits


def _cbn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class SqueezeExcite(nn.Module):
    """timm's SEModule: mean over H, W -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid gate."""

    def __init__(self, c: int, reduction: int = 4):
        super().__init__()
        mid = max(c // reduction, 4)
        self.fc1, self.fc2 = nn.Conv2d(c, mid, 1), nn.Conv2d(mid, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class Block(nn.Module):
    """Post-activation block (basic 3x3-3x3, or bottleneck 1x1-3x3-1x1 with ``mid`` and ``groups``),
    an optional SE gate before the Add, and a projection (1x1 conv, or ResNet-D's avg-pool + 1x1)."""

    residual = 1

    def __init__(self, cin: int, cout: int, stride: int = 1, *, mid: int | None = None, groups: int = 1, se: bool = False,
                 pool_shortcut: bool = False):
        super().__init__()
        if mid is None:
            layers = [*_cbn(cin, cout, 3, stride), nn.ReLU(), *_cbn(cout, cout, 3)]
        else:
            layers = [*_cbn(cin, mid, 1), nn.ReLU(), *_cbn(mid, mid, 3, stride, groups), nn.ReLU(), *_cbn(mid, cout, 1)]
        self.branch = nn.Sequential(*layers)
        self.se = SqueezeExcite(cout) if se else nn.Identity()
        self.proj = None
        if stride != 1 or cin != cout:
            pool = [nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)] if pool_shortcut and stride > 1 else []
            self.proj = nn.Sequential(*pool, *_cbn(cin, cout, 1, 1 if pool else stride))

    def forward(self, x):
        skip = x if self.proj is None else self.proj(x)
        return torch.relu(self.se(self.branch(x)) + skip)


class PreActBlock(nn.Module):
    """ResNetV2: BN-ReLU-conv-BN-ReLU-conv; the projection reads the pre-activated tensor."""

    residual = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.pre = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                    nn.Conv2d(cout, cout, 3, 1, 1, bias=False))
        self.proj = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        p = self.pre(x)
        return self.branch(p) + (x if self.proj is None else self.proj(p))


class Net(nn.Module):
    def __init__(self, stem: list[nn.Module], blocks: list[nn.Module], features: int, head: list[nn.Module] = ()):
        super().__init__()
        self.stem, self.blocks, self.head = nn.Sequential(*stem), nn.Sequential(*blocks), nn.Sequential(*head)
        self.fc = nn.Linear(features, NUM_CLASSES)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    @property
    def residual_blocks(self) -> int:
        return sum(getattr(m, "residual", 0) for m in self.modules())


def se_resnet() -> Net:
    return Net([*_cbn(3, 16, 3), nn.ReLU()], [Block(16, 16, se=True), Block(16, 32, 2, se=True), Block(32, 32, se=True)], 32)


def preact_resnet() -> Net:
    return Net([nn.Conv2d(3, 16, 3, 1, 1, bias=False)], [PreActBlock(16, 16), PreActBlock(16, 32, 2), PreActBlock(32, 32)], 32,
               [nn.BatchNorm2d(32), nn.ReLU()])


def resnext() -> Net:
    return Net([*_cbn(3, 16, 3), nn.ReLU()],
               [Block(16, 32, 2, mid=16, groups=4), Block(32, 32, mid=16, groups=4), Block(32, 32, mid=16, groups=4)], 32)


def wide_resnet() -> Net:
    return Net([*_cbn(3, 16, 3), nn.ReLU()], [Block(16, 32, 2, mid=32), Block(32, 32, mid=32)], 32)


def resnet_d() -> Net:
    stem = [*_cbn(3, 8, 3), nn.ReLU(), *_cbn(8, 8, 3), nn.ReLU(), *_cbn(8, 16, 3), nn.ReLU()]
    return Net(stem, [Block(16, 16), Block(16, 32, 2, pool_shortcut=True), Block(32, 32)], 32)


MEMBERS: dict[str, Callable[[], Net]] = {
    f.__name__: f for f in (se_resnet, preact_resnet, resnext, wide_resnet, resnet_d)
}
DYNAMO = {"se_resnet"}  # exported as its users export it (timm + torch.onnx dynamo), where this PyTorch can


def digits_split(seed: int = 0) -> dict:
    """Normalised digits (the training split's own mean/std), 70/30 stratified, as the corpus does."""
    from sklearn.model_selection import train_test_split

    x, y = _digits_images()
    tr, te = train_test_split(np.arange(len(y)), test_size=0.3, stratify=y, random_state=seed)
    mean, std = x[tr].mean(axis=(0, 2, 3)), x[tr].std(axis=(0, 2, 3))
    xn = ((x - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)
    return {"x": xn, "y": y, "train": tr, "test": te, "mean": mean, "std": std}


def train(model: nn.Module, data: dict, epochs: int = 12, seed: int = 0) -> float:
    """corpus.fit_on_digits on the training split; held-out top-1."""
    torch.manual_seed(seed)
    tr, te = data["train"], data["test"]
    return fit_on_digits(model, data["x"][tr], data["y"][tr], data["x"][te], data["y"][te], epochs=epochs, seed=seed)


def export(model: nn.Module, path: Path, dynamo: bool = False) -> str:
    """torch.onnx.export with a dynamic batch; the dynamo exporter where asked and available."""
    params = inspect.signature(torch.onnx.export).parameters
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo and "dynamo" in params:
            try:
                torch.onnx.export(model.eval(), (torch.zeros(1, *CHW),), str(path), dynamo=True,
                                  dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
                return "dynamo"
            except Exception:  # an older/newer PyTorch-onnxscript pair: the TorchScript exporter below
                pass
        kwargs = {"dynamo": False} if "dynamo" in params else {}
        torch.onnx.export(model.eval(), (torch.zeros(1, *CHW),), str(path), opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **kwargs)
    return "torchscript"


def build_member(name: str, folder: Path, seed: int = 0) -> tuple[Foreign, dict]:
    """Train and export one member; returns its Foreign and the data (calibration, held-out)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = digits_split()
    torch.manual_seed(seed)
    model = MEMBERS[name]()
    top1 = train(model, data, seed=seed)
    path = folder / f"{name}.onnx"
    exporter = export(model, path, dynamo=name in DYNAMO)
    tr, te = data["train"], data["test"]
    out = {"calib": np.ascontiguousarray(data["x"][tr[:512]]), "eval_x": np.ascontiguousarray(data["x"][te]),
           "eval_y": data["y"][te].copy(), "torch_top1": top1, "exporter": exporter, "model": model,
           "mean": data["mean"], "std": data["std"]}
    return Foreign(name, path, model.residual_blocks, "nchw", CHW, NUM_CLASSES, 17, f"{name}, {exporter} exporter"), out


# --------------------------------------------------------------------------- as other tools hand them over


def quantize_static(src: Path, dst: Path, calib: np.ndarray, *, symmetric_int8: bool) -> Path:
    """ONNX Runtime's quantize_static as its docs show it (QDQ, per-channel weights, MinMax), with
    symmetric int8 activations (the only kind TensorRT runs) or uint8 ones (ONNX Runtime on a CPU)."""
    import onnx
    from onnxruntime import quantization as q

    name = onnx.load(str(src)).graph.input[0].name

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calib[i:i + 32] for i in range(0, len(calib), 32))

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {name: x}

    acts = dict(activation_type=q.QuantType.QInt8, extra_options={"ActivationSymmetric": True}) if symmetric_int8 \
        else dict(activation_type=q.QuantType.QUInt8)
    q.quantize_static(str(src), str(dst), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True, weight_type=q.QuantType.QInt8,
                      **acts)
    return dst


def deployed(path: Path, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime as an application runs it (graph optimizations on: its integer kernels)."""
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def keras_nhwc(model, data: dict, path: Path) -> dict:
    """The member behind an NHWC raw-pixel input: Mul(1/255), Sub(mean), Div(std), Transpose, as
    Keras' Rescaling + Normalization export; data become NHWC 0-255 floats."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    body = path.with_name("body.onnx")
    export(model, body)
    m = onnx.load(str(body))
    g = m.graph
    old = g.input[0].name
    g.input.remove(g.input[0])
    g.input.insert(0, helper.make_tensor_value_info("keras_tensor", TensorProto.FLOAT, ["N", 32, 32, 3]))
    consts = {"k_scale": np.float32(1 / 255), "k_mean": data["mean"].astype(np.float32), "k_std": data["std"].astype(np.float32)}
    g.initializer.extend(numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items())
    front = [helper.make_node("Mul", ["keras_tensor", "k_scale"], ["k1"]), helper.make_node("Sub", ["k1", "k_mean"], ["k2"]),
             helper.make_node("Div", ["k2", "k_std"], ["k3"]), helper.make_node("Transpose", ["k3"], [old], perm=[0, 3, 1, 2])]
    for n in reversed(front):
        g.node.insert(0, n)
    onnx.save(m, str(path))

    def pixels(x):  # the normalised NCHW arrays back to NHWC 0-255
        return np.ascontiguousarray(((x * data["std"][None, :, None, None] + data["mean"][None, :, None, None]) * 255)
                                    .transpose(0, 2, 3, 1).astype(np.float32))
    return {"calib": pixels(data["calib"]), "eval_x": pixels(data["eval_x"]), "eval_y": data["eval_y"]}


def float16(model, path: Path) -> None:
    import copy

    import torch

    half = copy.deepcopy(model).half().eval()
    kwargs = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(half, (torch.zeros(1, *CHW, dtype=torch.float16),), str(path), opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **kwargs)
