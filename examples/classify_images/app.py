"""Classify image files with a rescompile bundle: the smallest edge app.

    python app.py BUNDLE_DIR image.png [more images or folders] [--top-k 3]

It needs only `rescompile.runtime` (numpy, Pillow, and ONNX Runtime or TensorRT): no PyTorch.
On a Jetson with the bundle's engine built (`rescompile build --from-bundle BUNDLE_DIR`) it runs
TensorRT; anywhere else it runs the bundle's CPU INT8 model with ONNX Runtime.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rescompile import runtime
from rescompile.errors import RescompileError

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


def images_in(paths: list[Path]) -> list[Path]:
    found = []
    for p in paths:
        found.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in SUFFIXES) if p.is_dir() else [p])
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="bundle directory written by `rescompile build`")
    parser.add_argument("images", type=Path, nargs="+", help="image files or folders")
    parser.add_argument("--top-k", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        with runtime.load(args.bundle) as model:  # TensorRT when it can run here, else the CPU engine the build found faster
            one = model.runner_for(1)  # what classify (one image a call) runs
            print(f"running {one.backend} on {Path(str(one.source)).name}")
            for path in images_in(args.images):
                start = time.perf_counter()
                top = model.classify(path, top_k=args.top_k)
                ms = (time.perf_counter() - start) * 1e3
                guesses = ", ".join(f"{p.label} ({p.probability:.1%})" for p in top)
                print(f"{path.name}: {guesses}  [{ms:.1f} ms]")
    except RescompileError as exc:  # every rescompile error is one line saying how to fix it
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
