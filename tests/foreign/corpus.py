"""ONNX ResNet files "made elsewhere": the shapes of file other exporters write.

Each CORPUS entry is a builder(folder) that writes `<name>.onnx` into `folder` and
returns a `Foreign` describing what the file really holds, so tests can check that
rescompile reads foreign files correctly (block count, layout, shapes, classes)
without relying on anything rescompile itself wrote. Everything is small (3x32x32,
8-32 channels), seeded, and every BatchNorm has random statistics, so a mistake
in BN folding, layout or residual detection changes the outputs visibly.
"""

from __future__ import annotations

import importlib.util
import inspect
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn


@dataclass(frozen=True)
class Foreign:
    name: str  # corpus key
    path: Path  # the .onnx file written
    blocks: int  # residual blocks really in the model (Add/Sum of a conv branch and a skip)
    layout: str  # "nchw" or "nhwc": layout of the graph input as declared
    input_shape: tuple  # (C, H, W) for nchw, (H, W, C) for nhwc; per image, no batch
    num_classes: int
    opset: int  # the opset the file declares
    notes: str  # one line: what is unusual about it


NUM_CLASSES = 10
CHW = (3, 32, 32)
BLOCKS = {"basic": 3, "bottleneck": 2}


# --------------------------------------------------------------------------- torch models


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]


class _Basic(nn.Module):
    """3x3-3x3 block; a 1x1 conv+BN projection skip when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.branch = nn.Sequential(*_conv_bn(cin, cout, 3, stride), nn.ReLU(), *_conv_bn(cout, cout, 3))
        self.proj = nn.Sequential(*_conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else None

    def forward(self, x):
        skip = x if self.proj is None else self.proj(x)
        return torch.relu(self.branch(x) + skip)


class _Bottleneck(nn.Module):
    """1x1-3x3-1x1 block (stride on the 3x3, torchvision v1.5 style)."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int):
        super().__init__()
        self.branch = nn.Sequential(
            *_conv_bn(cin, mid, 1), nn.ReLU(), *_conv_bn(mid, mid, 3, stride), nn.ReLU(), *_conv_bn(mid, cout, 1)
        )
        self.proj = nn.Sequential(*_conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else None

    def forward(self, x):
        skip = x if self.proj is None else self.proj(x)
        return torch.relu(self.branch(x) + skip)


class TinyResNet(nn.Module):
    """basic: stem, identity / stride-2 projection / identity blocks (3 residuals).
    bottleneck: stem, projection / identity bottlenecks (2 residuals).
    matmul_head: Reshape -> MatMul -> Add -> Softmax instead of Flatten -> Gemm."""

    def __init__(self, kind: str = "basic", num_classes: int = NUM_CLASSES, matmul_head: bool = False):
        super().__init__()
        if kind == "basic":
            width, blocks = 8, [_Basic(8, 8, 1), _Basic(8, 16, 2), _Basic(16, 16, 1)]
        else:
            width, blocks = 16, [_Bottleneck(16, 8, 32, 2), _Bottleneck(32, 8, 32, 1)]
        self.stem = nn.Sequential(*_conv_bn(3, width, 3), nn.ReLU())
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.features = blocks[-1].branch[-1].num_features
        self.matmul_head = matmul_head
        if matmul_head:
            self.w = nn.Parameter(torch.randn(self.features, num_classes) * 0.3)
            self.b = nn.Parameter(torch.randn(num_classes) * 0.1)
        else:
            self.fc = nn.Linear(self.features, num_classes)

    def forward(self, x):
        x = self.pool(self.blocks(self.stem(x)))
        if self.matmul_head:
            # A constant [-1, C] target: the exporter writes Reshape, then MatMul and Add.
            return torch.softmax(x.reshape(-1, self.features) @ self.w + self.b, dim=1)
        return self.fc(torch.flatten(x, 1))


def _model(kind: str, seed: int, matmul_head: bool = False) -> TinyResNet:
    """Seeded model whose BNs have non-trivial statistics (identity BNs would hide folding bugs)."""
    torch.manual_seed(seed)
    model = TinyResNet(kind, matmul_head=matmul_head)
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
        # Pooled features of a random net barely vary between inputs, so logits would be
        # ~constant (same argmax for every image). Standardise the head on random-normal
        # images so outputs are input-dependent and a wrong kernel changes the top-1.
        model.eval()
        f = torch.flatten(model.pool(model.blocks(model.stem(torch.randn(64, *CHW, generator=g)))), 1)
        mu = f.mean(0)
        w = model.w if matmul_head else model.fc.weight.T  # [features, classes] view
        w.mul_(2.0 / ((f - mu) @ w).std(0))  # each class logit: std ~2 over inputs, mean ~0
        (model.b if matmul_head else model.fc.bias).copy_(-mu @ w)
    return model


def _export(model: nn.Module, path: Path, opset: int, *, keep_bn: bool = False, keep_inits: bool = False,
            input_name: str = "input", output_name: str = "logits") -> onnx.ModelProto:
    """Legacy (TorchScript) export, dynamic batch; returns the loaded proto for editing.

    keep_bn: TrainingMode.PRESERVE on an eval model skips the eval peephole that folds
    BN into Conv, so BatchNormalization nodes stay (as old exporters wrote them)."""
    kwargs = {
        "opset_version": opset, "input_names": [input_name], "output_names": [output_name],
        "dynamic_axes": {input_name: {0: "batch"}, output_name: {0: "batch"}},
        "keep_initializers_as_inputs": keep_inits, "do_constant_folding": not keep_bn,
        "training": torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL,
    }
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices
        torch.onnx.export(model.eval(), (torch.zeros(1, *CHW),), str(path), **kwargs)
    return onnx.load(str(path))


# --------------------------------------------------------------------------- graph edits


def _constants(g: onnx.GraphProto) -> set[str]:
    return {t.name for t in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}


def _residual_adds(g: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Adds with two computed inputs (bias/BN Adds have a constant operand)."""
    consts = _constants(g)
    return [n for n in g.node if n.op_type in ("Add", "Sum") and len(n.input) == 2 and not set(n.input) & consts]


def _to_sum(g: onnx.GraphProto, expect: int) -> None:
    adds = _residual_adds(g)
    assert len(adds) == expect, f"found {len(adds)} residual adds, expected {expect}"
    for n in adds:
        n.op_type = "Sum"  # Sum(a, b) == Add(a, b); same inputs, outputs and (no) attributes


def _neg1_batch(vi: onnx.ValueInfoProto) -> None:
    d = vi.type.tensor_type.shape.dim[0]
    d.Clear()  # drop the dim_param so the oneof holds dim_value = -1 (what Caffe2-era files say)
    d.dim_value = -1


def _no_shape(vi: onnx.ValueInfoProto) -> None:
    vi.type.tensor_type.ClearField("shape")


def _rename(g: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Rename tensors everywhere they are referenced."""
    for n in g.node:
        n.input[:] = [mapping.get(s, s) for s in n.input]
        n.output[:] = [mapping.get(s, s) for s in n.output]
    for coll in (g.input, g.output, g.value_info, g.initializer):
        for v in coll:
            v.name = mapping.get(v.name, v.name)


def _save(model: onnx.ModelProto, path: Path) -> None:
    onnx.save(model, str(path))


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _foreign(name: str, path: Path, kind: str, notes: str, layout: str = "nchw") -> Foreign:
    shape = CHW if layout == "nchw" else (CHW[1], CHW[2], CHW[0])
    return Foreign(name, path, BLOCKS[kind], layout, shape, NUM_CLASSES, _opset(onnx.load(str(path))), notes)


# --------------------------------------------------------------------------- corpus builders


def torch_opset9_keep_inits(folder: Path) -> Foreign:
    path = Path(folder) / "torch_opset9_keep_inits.onnx"
    m = _export(_model("basic", 1), path, 9, keep_bn=True, keep_inits=True)
    # Early-PyTorch names (torch refuses a numeric name at export time, so rename after).
    _rename(m.graph, {"input": "input.1", "logits": "123"})
    # IR 3 (ONNX 1.1/1.2 era): initializers must also be graph inputs, which keep_inits gives.
    m.ir_version = 3
    _save(m, path)
    return _foreign(path.stem, path, "basic", "opset 9, IR 3, weights listed as graph inputs, BatchNormalization kept")


def torch_opset11_bn_kept(folder: Path) -> Foreign:
    path = Path(folder) / "torch_opset11_bn_kept.onnx"
    _export(_model("bottleneck", 2), path, 11, keep_bn=True)
    return _foreign(path.stem, path, "bottleneck", "bottleneck blocks, opset 11, BatchNormalization kept unfolded")


def torch_opset12(folder: Path) -> Foreign:
    path = Path(folder) / "torch_opset12.onnx"
    _export(_model("basic", 3), path, 12)
    return _foreign(path.stem, path, "basic", "opset 12, BN folded into Conv by torch")


def torch_opset13_normalised(folder: Path) -> Foreign:
    path = Path(folder) / "torch_opset13_normalised.onnx"
    _export(_model("basic", 4), path, 13)
    return _foreign(path.stem, path, "basic", "plain modern opset 13 export, BN folded")


def sum_residuals(folder: Path) -> Foreign:
    path = Path(folder) / "sum_residuals.onnx"
    m = _export(_model("basic", 5), path, 13)
    _to_sum(m.graph, BLOCKS["basic"])
    _save(m, path)
    return _foreign(path.stem, path, "basic", "residual additions written as Sum (Caffe2 / old converters)")


def neg1_dims_no_output_shape(folder: Path) -> Foreign:
    path = Path(folder) / "neg1_dims_no_output_shape.onnx"
    m = _export(_model("basic", 6), path, 13)
    _neg1_batch(m.graph.input[0])
    _no_shape(m.graph.output[0])
    _save(m, path)  # onnx.save does not run the checker; the file may not pass it
    return _foreign(path.stem, path, "basic", "input batch dim_value -1, graph output type has no shape")


def nhwc_transpose(folder: Path) -> Foreign:
    path = Path(folder) / "nhwc_transpose.onnx"
    m = _export(_model("basic", 7), path, 13, input_name="model/body_in", output_name="dense")
    g = m.graph
    h, w, c = CHW[1], CHW[2], CHW[0]
    # tf2onnx keeps the Keras NHWC input and transposes to NCHW right in front of the first Conv.
    new_in = helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["unk__0", h, w, c])
    tr = helper.make_node("Transpose", ["input_1:0"], ["model/body_in"], "model/conv2d/Conv2D__6", perm=[0, 3, 1, 2])
    g.input.remove(g.input[0])
    g.input.insert(0, new_in)
    g.node.insert(0, tr)
    _save(m, path)
    return _foreign(path.stem, path, "basic", "Keras/tf2onnx NHWC input 'input_1:0' then Transpose(0,3,1,2)", "nhwc")


def tf2onnx_mul_add_bn(folder: Path) -> Foreign:
    path = Path(folder) / "tf2onnx_mul_add_bn.onnx"
    m = _export(_model("basic", 8), path, 13, keep_bn=True)
    g = m.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    used_by_bn: set[str] = set()
    nodes: list[onnx.NodeProto] = []
    # 1) BatchNormalization -> Mul(scale) + Add(shift) with [C,1,1] constants (what tf2onnx
    #    emits for a FusedBatchNorm it could not fuse into the Conv).
    for n in g.node:
        if n.op_type != "BatchNormalization":
            nodes.append(n)
            continue
        gamma, beta, mean, var = (inits[s] for s in n.input[1:])
        used_by_bn.update(n.input[1:])
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5)
        scale = (gamma / np.sqrt(var + eps)).astype(np.float32)
        shift = (beta - mean * scale).astype(np.float32)
        s_name, b_name, mid = n.output[0] + "_s", n.output[0] + "_b", n.output[0] + "_m"
        g.initializer.extend([numpy_helper.from_array(scale.reshape(-1, 1, 1), s_name),
                              numpy_helper.from_array(shift.reshape(-1, 1, 1), b_name)])
        nodes.append(helper.make_node("Mul", [n.input[0], s_name], [mid]))
        nodes.append(helper.make_node("Add", [mid, b_name], [n.output[0]]))
    keep = [t for t in g.initializer if t.name not in used_by_bn]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]  # stale names otherwise; tf2onnx files often carry none
    # 2) tf2onnx-style names: "model/<layer>_<k>/<TfOp>:0", residual layers with a space.
    consts = _constants(g)
    layer = {"Conv": ("conv2d", "Conv2D"), "Mul": ("batch_normalization", "mul"), "Relu": ("re_lu", "Relu"),
             "GlobalAveragePool": ("global_average_pooling2d", "Mean"), "Flatten": ("flatten", "Reshape"),
             "Gemm": ("dense", "BiasAdd")}
    count: Counter = Counter()
    rename = {g.input[0].name: "input_1:0", g.output[0].name: "Identity:0"}
    for n in g.node:
        if n.op_type == "Add" and set(n.input) & consts:
            base, op = "batch_normalization", "add"  # pairs with the Mul just before it
            k = count["Mul"] - 1
        else:
            other = ("residual add", "add") if n.op_type == "Add" else (n.op_type.lower(), n.op_type)
            base, op = layer.get(n.op_type, other)
            k = count[n.op_type]
            count[n.op_type] += 1
        n.name = f"model/{base}_{k}/{op}"
        for s in n.output:
            rename.setdefault(s, n.name + ":0")
        for j, s in enumerate(n.input):
            if s in consts and s not in rename:
                rename[s] = f"{n.name}/ReadVariableOp_{j}:0"
    _rename(g, rename)
    g.input[0].type.tensor_type.shape.dim[0].dim_param = "unk__0"
    g.output[0].type.tensor_type.shape.dim[0].dim_param = "unk__0"
    _save(m, path)
    return _foreign(path.stem, path, "basic",
                    "BN as per-channel Mul+Add after each Conv, tf2onnx names with '/', ':' and spaces")


def matmul_head(folder: Path) -> Foreign:
    path = Path(folder) / "matmul_head.onnx"
    _export(_model("basic", 9, matmul_head=True), path, 13, output_name="probs")
    return _foreign(path.stem, path, "basic", "head is Reshape->MatMul->Add, Softmax last (outputs probabilities)")


def caffe2_style(folder: Path) -> Foreign:
    path = Path(folder) / "caffe2_style.onnx"
    m = _export(_model("bottleneck", 10), path, 9, keep_bn=True, keep_inits=True,
                input_name="gpu_0/data_0", output_name="gpu_0/fc_1")
    g = m.graph
    _to_sum(g, BLOCKS["bottleneck"])
    _neg1_batch(g.input[0])
    _no_shape(g.output[0])
    for i, n in enumerate(g.node):
        n.name = f"{n.op_type.lower()} {i}:{n.output[0]}"  # spaces and colons in node names
    _save(m, path)
    return _foreign(path.stem, path, "bottleneck",
                    "opset 9, weights as inputs, BN kept, residuals as Sum, batch -1, no output shape, odd node names")


def external_data(folder: Path) -> Foreign:
    path = Path(folder) / "external_data.onnx"
    m = _export(_model("bottleneck", 11), path, 17)
    onnx.save(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="external_data.onnx.data",
              size_threshold=0)  # every weight in the .data file beside it, as large-model exports do
    return _foreign(path.stem, path, "bottleneck", "opset 17, every weight in external_data.onnx.data beside the model")


def torch_dynamo(folder: Path) -> Foreign:
    """torch.onnx.export's default exporter since PyTorch 2.9 (torch.export + onnxscript): recent opset,
    IR 10, weights in a .data file beside the model, names taken from the Python code, its own graph
    optimizer's output (ReduceMean/Reshape where the legacy exporter wrote GlobalAveragePool/Flatten)."""
    path = Path(folder) / "torch_dynamo.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_model("basic", 12).eval(), (torch.zeros(1, *CHW),), str(path), dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    return _foreign(path.stem, path, "basic", "torch.onnx.export(dynamo=True): opset 18+, IR 10, external weights")


def _dynamo_exporter() -> bool:
    """torch.onnx.export(dynamo=True) exists here (PyTorch >= 2.5) and has onnxscript (in the dev extras)."""
    params = inspect.signature(torch.onnx.export).parameters
    return "dynamo" in params and "dynamic_shapes" in params and importlib.util.find_spec("onnxscript") is not None


_DYNAMO = (torch_dynamo,) if _dynamo_exporter() else ()
# Entries whose exporter may fail on an older or newer PyTorch/onnxscript pair: left out, with the reason.
OPTIONAL = {"torch_dynamo"}

CORPUS: dict[str, Callable[[Path], Foreign]] = {
    f.__name__: f
    for f in (torch_opset9_keep_inits, torch_opset11_bn_kept, torch_opset12, torch_opset13_normalised, sum_residuals,
              neg1_dims_no_output_shape, nhwc_transpose, tf2onnx_mul_add_bn, matmul_head, caffe2_style, external_data,
              *_DYNAMO)
}


def build_all(folder: Path) -> dict[str, Foreign | str]:
    """Every entry's Foreign; an OPTIONAL entry whose exporter failed here maps to the reason instead."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    out: dict[str, Foreign | str] = {}
    for name, build in CORPUS.items():
        try:
            out[name] = build(Path(folder))
        except Exception as exc:
            if name not in OPTIONAL:
                raise
            out[name] = f"{name} could not be exported here ({exc.__class__.__name__}: {str(exc)[:120]})"
    return out


def reference_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime CPU, all graph optimizations off, fed only the image input."""
    import onnxruntime as ort

    g = onnx.load(str(path)).graph
    inits = {t.name for t in g.initializer}
    (image,) = [i.name for i in g.input if i.name not in inits]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3  # IR<4 files with weights as inputs warn once per weight
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {image: np.ascontiguousarray(x, dtype=np.float32)})[0]


# --------------------------------------------------------------------------- a really trained model


def _digits_images() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()  # ships with scikit-learn: no download
    img = np.kron(d.images.astype(np.float32) / 16.0, np.ones((1, 4, 4), np.float32))  # 8x8 -> 32x32, [0,1]
    return np.repeat(img[:, None], 3, axis=1), d.target.astype(np.int64)  # 3 equal channels, NCHW


def fit_on_digits(model: nn.Module, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *, epochs: int,
                  seed: int) -> float:
    """A short one-cycle Adam run (batches of 32, lr 1e-2) on one intra-op thread; held-out top-1.
    One thread: on a 2-core box shared with another busy process, 2 spinning OpenMP threads ran
    ~7x slower per epoch than 1 (1 s vs 7-8 s); alone, 2 gain only ~25%."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batch = 32
        steps = len(x) // batch
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-2, total_steps=epochs * steps)
        rng = np.random.default_rng(seed)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        model.train()
        for _ in range(epochs):
            for idx in np.array_split(rng.permutation(len(x)), steps):
                opt.zero_grad()
                nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
                opt.step()
                sched.step()
        model.eval()
        with torch.no_grad():
            return float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    finally:
        torch.set_num_threads(threads)


def trained_normalised_digits(folder: Path, stats: tuple[float, float] | None = None, name: str = "trained_normalised_digits",
                              seed: int = 0) -> tuple[Foreign, dict]:
    """Basic TinyResNet trained on sklearn digits with normalisation done OUTSIDE the graph
    (as torchvision models are exported). Returns the Foreign and model-ready float32 arrays.
    ``stats`` = (mean, std) for all channels instead of the training split's own, e.g. MNIST's
    (0.13, 0.29): background -0.45, strokes +3.0, the spiky input an entropy search clips.
    ``seed`` changes the initial weights and the batch order (benchmarks/tolerance_noise.py trains
    several, as other CPUs' kernels would, to measure how many held-out images move)."""
    from sklearn.model_selection import train_test_split

    x, y = _digits_images()
    tr, te = train_test_split(np.arange(len(y)), test_size=0.3, stratify=y, random_state=0)
    mean = x[tr].mean(axis=(0, 2, 3)) if stats is None else np.full(3, stats[0], np.float32)
    std = x[tr].std(axis=(0, 2, 3)) if stats is None else np.full(3, stats[1], np.float32)
    xn = ((x - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)

    torch.manual_seed(seed)
    model = TinyResNet("basic")
    # Global pooling over a ~21 px receptive field learns digits slowly; a one-cycle
    # schedule reaches ~98-99% held-out in 10 short epochs (~1 s each on 2 free cores).
    top1 = fit_on_digits(model, xn[tr], y[tr], xn[te], y[te], epochs=10, seed=seed)
    path = Path(folder) / f"{name}.onnx"
    Path(folder).mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _export(model, path, 13)
    finally:
        torch.set_num_threads(threads)
    foreign = Foreign(path.stem, path, BLOCKS["basic"], "nchw", CHW, NUM_CLASSES, 13,
                      "really trained on sklearn digits; input must be normalised outside the graph")
    data = {"calib": np.ascontiguousarray(xn[tr[:512]]), "eval_x": np.ascontiguousarray(xn[te]),
            "eval_y": y[te].copy(), "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "torch_top1": top1}
    return foreign, data
