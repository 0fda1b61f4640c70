"""rescompile predict"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rescompile.cli import app, options
from rescompile.cli._common import guarded, out, print_json
from rescompile.cli.options import Json
from rescompile.config import default_bundle_dir
from rescompile.errors import ConfigError, DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def image_files(paths: list[Path]) -> list[Path]:
    """Files as given; folders expanded to the image files under them (sorted)."""
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            inside = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise DataError(f"folder {p} holds no image files", "Pass image files or a folder of PNG/JPEG images")
            found.extend(inside)
        elif p.is_file():
            found.append(p)
        else:
            raise DataError(f"no such image file or folder: {p}", "Check the path")
    return found


@app.command(
    epilog=(
        "Examples:\n\n"
        "  rescompile predict seven.png                     (with the default build's bundle)\n\n"
        "  rescompile predict photos/ --bundle out/resnet18 --top-k 3\n\n"
        "  rescompile predict img.png --bundle out/resnet18 --backend onnxruntime --json"
    )
)
@guarded
def predict(
    images: Annotated[list[Path], typer.Argument(metavar="IMAGES", help="Image files, or folders of them.", show_default=False)],
    bundle: Annotated[str | None, typer.Option(
        "--bundle", "-b", metavar="<bundle>", help="Bundle folder, .engine, .onnx or checkpoint to classify with.",
        show_default="the default build's bundle",
    )] = None,
    top_k: Annotated[int, typer.Option(min=1, metavar="<k>", help="Classes to show per image.")] = 3,
    backend: Annotated[str | None, typer.Option(
        metavar="<name>", help="onnxruntime, openvino, tensorrt or torch.",
        show_default="TensorRT where it runs, else the CPU engine the build found faster",
    )] = None,
    threads: Annotated[int | None, options.threads()] = None,
    json_out: Json = False,
) -> None:
    """Classify images with a bundle, engine, ONNX file or checkpoint.

    The images go through rescompile's runtime, as an application's would.
    """
    from rescompile import runtime

    files = image_files(images)
    source = Path(bundle) if bundle else default_bundle_dir()
    if bundle is None and not source.exists():
        raise ConfigError(f"no bundle at {source}", "Run `rescompile build` first, or pass --bundle DIR")
    with runtime.load(source, backend=backend, threads=threads) as runner:
        results = [(f, runner.classify(f, top_k=top_k)) for f in files]
        ran = runner.runner_for(1)  # classify: one image a call
        pixels = getattr(ran, "pixels_source", None)  # classify ran the pixel-input artifact
        used = f"{ran.backend} on {Path(pixels).name} (uint8 pixels in)" if pixels else f"{ran.backend} on {Path(str(ran.source)).name}"
    if json_out:
        print_json({
            "runner": used,
            "predictions": [
                {"image": str(f), "top": [{"index": p.index, "label": p.label, "probability": p.probability} for p in preds]}
                for f, preds in results
            ],
        })
        return
    table = Table(title=f"predictions ({used})")
    table.add_column("image")
    table.add_column("class")
    table.add_column("probability", justify="right")
    table.add_column(f"top-{top_k}")
    for f, preds in results:
        best = preds[0]
        rest = ", ".join(f"{p.label} {p.probability:.1%}" for p in preds)
        table.add_row(f.name, best.label, f"{best.probability:.2%}", rest)
    out.print(table)
