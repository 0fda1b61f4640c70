"""rescompile calibrate"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from rescompile.cli import app, options
from rescompile.cli._common import StepProgress, err, guarded, out, print_json
from rescompile.cli._prep import DataFormat, preprocessing_override
from rescompile.cli.options import (
    CALIBRATION, OUTPUT, Arch, CalibBatch, CalibData, CenterCrop, DataDir, EvalData, Fallback, Format, Json, MaxDrop, Mean,
    Method, ModelArg, ModelInputSize, NumClasses, NumImages, Order, Percentile, Resize, Scale, Sensitivity, Std, TrtVersion,
    TrustCheckpoint,
)
from rescompile.config import CalibConfig, DataConfig

C = CalibConfig()


def calib_config(num_images, method, percentile, batch_size, trt_version, max_accuracy_drop, sensitivity, fallback=True) -> CalibConfig:
    return CalibConfig(
        method=method, percentile=percentile, num_images=num_images, batch_size=batch_size, trt_version=trt_version,
        max_accuracy_drop=max_accuracy_drop, sensitivity=sensitivity, fallback=fallback,
    )


def data_config(name: str | None, data_dir: Path | None, data_format: DataFormat = DataFormat.auto) -> DataConfig | None:
    return None if name is None else DataConfig(dataset=name, data_dir=data_dir, data_format=data_format.value)


def accuracy_table(acc: dict, title: str) -> Table:
    table = Table(title=title, caption="reference Q/DQ = what TensorRT computes; ORT, OpenVINO = as deployed")
    for col in ("model", "judged by", "top-1", "drop (pts)", "agreement", "cosine"):
        table.add_column(col, justify="right", no_wrap=True)
    rows = [("FP32", "ORT", acc["fp32"]), ("INT8 Q/DQ TensorRT", "reference Q/DQ", acc["int8_tensorrt_reference"]),
            ("INT8 CPU artifact", "ORT", acc["int8_cpu_onnxruntime"])]
    if acc.get("int8_given_reference"):  # an already-quantized model, as given (prequant.py)
        rows.insert(1, ("INT8 as given", "reference Q/DQ", acc["int8_given_reference"]))
    if acc.get("int8_cpu_pixels_onnxruntime"):
        rows.append(("INT8 CPU artifact, pixels in", "ORT", acc["int8_cpu_pixels_onnxruntime"]))
    ov = acc.get("int8_openvino")
    if ov and ov.get("written", True) and "top1_agreement" in ov:
        rows.append(("INT8 OpenVINO form", "OpenVINO" if ov.get("runtime") == "openvino" else "ORT", ov))
    for name, runtime, r in rows:
        top1 = "-" if r["top1"] is None else f"{r['top1']:.2%}"
        drop = "-" if r.get("drop_points") is None else f"{r['drop_points']:+.2f}"
        table.add_row(name, runtime, top1, drop, f"{r['top1_agreement']:.2%}", f"{r['cosine']:.5f}")
    return table


def tensor_table(rows: list[dict], title: str) -> Table:
    names = list(rows[0]["calibrators"]) if rows and rows[0]["calibrators"] else []
    if not names:
        names = next((list(r["calibrators"]) for r in rows if r["calibrators"]), [])
    t = Table(title=title)
    for col in ("tensor", "min", "max", "amax kept", "clipped", *names):
        t.add_column(col, justify="right" if col != "tensor" else "left")
    for r in rows:
        name = r["tensor"] if len(r["tensor"]) <= 48 else "..." + r["tensor"][-45:]
        t.add_row(escape(name) + (" (input)" if r["network_input"] else ""), f"{r['min']:.3g}", f"{r['max']:.3g}", f"{r['amax']:.3g}",
                  f"{r['clipped']:.3%}", *(f"{r['calibrators'][n]:.3g}" if n in r["calibrators"] else "-" for n in names))
    return t


def print_calibration(cal, full_report: bool = False) -> None:
    if cal.safety.get("note"):
        out.print(f"[yellow]safety net ({escape(cal.safety['judged_on'])}): {escape(cal.safety['note'])}[/yellow]")
    if cal.tensors:
        from rescompile.stages.calibrate.safety import worst_clipped

        rows = cal.tensors if full_report else worst_clipped(cal.tensors)
        out.print(tensor_table(rows, "every activation tensor" if full_report else "the five most clipped tensors (--report: all)"))
    if cal.candidates:
        t = Table(title="--method auto: calibrators on the held-out split")
        for col in ("method", "top-1", "drop (points)", "agreement", "cosine"):
            t.add_column(col, justify="right")
        for r in cal.candidates:
            name = r["method"] + (f" {r['percentile']}" if r["percentile"] else "")
            t.add_row(name, f"{r['top1']:.2%}", f"{r['drop_points']:+.2f}", f"{r['top1_agreement']:.2%}", f"{r['cosine']:.5f}")
        out.print(t)
    if cal.accuracy.get("evaluated"):
        what = cal.method + (f" {cal.percentile}" if cal.percentile else "")
        images = "its own scales" if cal.prequantized else f"{cal.images} calibration images"
        out.print(accuracy_table(cal.accuracy, f"INT8 accuracy ({what}, {images}, {cal.accuracy['images']} test images)"))
    if cal.sensitivity:
        t = Table(title="per-layer sensitivity (each layer quantized alone)")
        for col in ("layer", "drop (points)", "cosine"):
            t.add_column(col, justify="right")
        for r in cal.sensitivity[:10]:
            t.add_row(r["layer"], "-" if r["drop_points"] is None else f"{r['drop_points']:+.2f}", f"{r['cosine']:.6f}")
        out.print(t)
    if cal.float_layers:
        out.print(f"left in floating point to meet --max-accuracy-drop: {', '.join(cal.float_layers)}")
    lint = cal.lint
    verdict = "passes" if lint.get("passed") else f"FAILS ({len(lint.get('violations', []))} violations)"
    out.print(f"TensorRT Q/DQ lint: {verdict}")
    if cal.prequantized:  # an already-quantized model (prequant.py): where its own placement does not suit TensorRT
        bad = [r for r in cal.prequantized["placement"] if not r["suits_tensorrt"]]
        out.print(f"Q/DQ model {escape(cal.prequantized['qdq_model'])}; given placement: "
                  f"{len(bad)} of {len(cal.prequantized['placement'])} residual blocks unsuited to TensorRT (accuracy.json lists them)")
        if cal.accuracy.get("fp32_reference"):
            out.print(f"FP32 reference: {escape(cal.accuracy['fp32_reference'])}")


@app.command(
    epilog=(
        "Examples:\n\n"
        "  rescompile calibrate model.onnx --data calibration/digits -o out/int8\n\n"
        "  rescompile calibrate resnet50.onnx --data calib.npy --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 -o out/int8\n\n"
        "  rescompile calibrate best.pt --method auto --max-accuracy-drop 0.3 -o out/int8\n\n"
        "  rescompile calibrate model.onnx --from-cache jetson.cache --trt-version 10.3.0 -o out/int8"
    )
)
@guarded
def calibrate(
    model: ModelArg,
    output_dir: Annotated[Path, options.output_dir()],
    data: CalibData = None,
    eval_data: EvalData = None,
    data_dir: DataDir = None,
    data_format: Format = DataFormat.auto,
    mean: Mean = None,
    std: Std = None,
    scale: Scale = None,
    resize: Resize = None,
    center_crop: CenterCrop = None,
    channel_order: Order = None,
    method: Method = C.method,
    num_images: NumImages = C.num_images,
    max_accuracy_drop: MaxDrop = None,
    fallback: Fallback = True,
    percentile: Percentile = C.percentile,
    batch_size: CalibBatch = C.batch_size,
    sensitivity: Sensitivity = False,
    trt_version: TrtVersion = C.trt_version,
    from_cache: Annotated[Path | None, typer.Option(
        metavar="<file>", help="Take the scales from a TensorRT calibration cache instead of calibrating.", rich_help_panel=CALIBRATION,
    )] = None,
    from_scales: Annotated[Path | None, typer.Option(
        metavar="<file>", help="Take the scales from an earlier calibration's scales.json instead of calibrating.",
        rich_help_panel=CALIBRATION,
    )] = None,
    arch: Arch = None,
    num_classes: NumClasses = None,
    input_size: ModelInputSize = None,
    trust_checkpoint: TrustCheckpoint = False,
    report: Annotated[bool, typer.Option(
        "--report", help="List every activation tensor: its range, amax and share clipped.", rich_help_panel=OUTPUT,
    )] = False,
    json_out: Json = False,
) -> None:
    """Calibrate INT8 on real images into Q/DQ ONNX, TensorRT cache and CPU INT8 model.

    All three come from one set of scales.
    """
    from rescompile.models.load import load_model
    from rescompile.pipeline import calibrate_into, int8_inputs
    from rescompile.stages.calibrate.prequant import refuse_quantized

    refuse_quantized(model)  # already quantized (Q/DQ, or QOperator): `build` uses its own scales; never calibrated twice
    config = calib_config(num_images, method, percentile, batch_size, trt_version, max_accuracy_drop, sensitivity, fallback)
    prep = preprocessing_override(mean, std, scale, resize, center_crop, channel_order)
    from rescompile.data.arrays import array_image_size

    loaded = load_model(model, arch=arch, num_classes=num_classes, input_size=input_size, trust_checkpoint=trust_checkpoint,
                        preprocessing=prep, data_size=array_image_size(data) if data else None)
    # Data (or cache) is loaded and checked first: bad input leaves the output directory untouched.
    inputs = int8_inputs(loaded.spec, config, data_config(data, data_dir, data_format), data_config(eval_data, data_dir, data_format),
                         from_cache, from_scales)
    with StepProgress(enabled=not json_out) as progress:
        cal = calibrate_into(loaded, output_dir, config, inputs, on_progress=progress)
    if json_out:
        print_json({
            "method": cal.method, "percentile": cal.percentile, "images": cal.images, "accuracy": cal.accuracy,
            "auto_candidates": cal.candidates, "sensitivity": cal.sensitivity, "float_layers": cal.float_layers, "lint": cal.lint,
            "safety_net": cal.safety, "tensors": cal.tensors,
            "files": {k: str(getattr(cal, k)) for k in ("qdq_path", "cpu_path", "pixels_path", "cache_path", "scales_path", "accuracy_path")
                      if getattr(cal, k) is not None},
        })
        return
    for note in (*(loaded.intake.notes if loaded.intake else ()), *inputs.notes):  # how the model and data were read
        err.print(escape(note), highlight=False)
    print_calibration(cal, full_report=report)
    err.print(f"artifacts: {output_dir}")
