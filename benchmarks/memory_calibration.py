"""Peak memory of INT8 calibration for 512 vs 4,096 images: bounded by the batch size, not the count.

Makes folders of N real-looking 32x32 PNGs (scikit-learn's digits as ``load_dataset("digits")``
prepares them, repeated with small random shifts, one sub-folder per class), exports ``resnet20``
with random weights to ONNX once, then runs

    python -m rescompile calibrate MODEL --data FOLDER --num-images N -o OUT --json

in a fresh process per N and reads that child's own peak RSS from ``os.wait4`` (the kernel's
ru_maxrss of exactly that process, not the maximum over all children). Linux carries the RSS a
process had before execve() into its ru_maxrss, so this script stays small (numpy, torch and the
image writing run in a setup child) and prints its own RSS: a child can never read below it.
The model carries no
training dataset and no --eval-data is given, so the accuracy check is skipped and the numbers
are calibration's (statistics over N images in batches, cache, Q/DQ and CPU INT8 models).

    python benchmarks/memory_calibration.py [--sizes 512 4096] [--batch-size 32] [--limit 1.25]

Exits 1 when the largest size's peak RSS exceeds --limit times the smallest's, or a run fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import resource
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Run:
    label: str
    images: int | None
    peak_rss_mib: float
    wall_s: float
    cpu_s: float
    returncode: int
    stderr_tail: str


def write_digit_folder(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` PNGs of digits shifted by up to 2 pixels, in root/<digit>/ folders."""
    import numpy as np
    from PIL import Image

    from rescompile.data.datasets import digits_images

    images, labels = digits_images()  # (1797, 32, 32, 3) uint8, as load_dataset("digits") uses them
    rng = np.random.default_rng(seed)
    for digit in range(10):
        (root / str(digit)).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        k = i % len(images)
        dy, dx = rng.integers(-2, 3, size=2)
        shifted = np.zeros_like(images[k])  # shift with a black border, not a wrap-around
        src = images[k][max(0, -dy): 32 - max(0, dy), max(0, -dx): 32 - max(0, dx)]
        shifted[max(0, dy): max(0, dy) + src.shape[0], max(0, dx): max(0, dx) + src.shape[1]] = src
        Image.fromarray(shifted).save(root / str(int(labels[k])) / f"{i:05d}.png")
    return root


def export_model(path: Path) -> Path:
    """resnet20 with random weights as ONNX (the default architecture; weights do not change memory)."""
    from rescompile.models.load import load_model
    from rescompile.stages.export import onnx_from_torch

    src = load_model("resnet20")
    onnx_from_torch(src.module, src.spec, path)
    return path


def measure(label: str, cmd: list[str], work: Path) -> Run:
    """Run ``cmd`` as a child and return its own peak RSS (os.wait4), wall and CPU time."""
    out_path, err_path = work / f"{label}.stdout", work / f"{label}.stderr"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen so it does not wait again
    images = None
    try:
        images = json.loads(out_path.read_text()).get("images")
    except (ValueError, AttributeError):
        pass
    stderr_lines = err_path.read_text(errors="replace").strip().splitlines()
    return Run(
        label, images, usage.ru_maxrss / 1024.0, wall, usage.ru_utime + usage.ru_stime, proc.returncode,
        "\n".join(stderr_lines[-5:]),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 4096], help="image counts (default: 512 4096)")
    parser.add_argument("--batch-size", type=int, default=32, help="calibration batch size (default: %(default)s)")
    parser.add_argument("--limit", type=float, default=1.25, help="largest/smallest peak RSS allowed (default: %(default)s)")
    parser.add_argument("--method", default="entropy", help="calibrator (default: %(default)s)")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep images, model and outputs here [default: a temp dir]")
    parser.add_argument("--setup-into", type=Path, default=None, help=argparse.SUPPRESS)  # the setup child
    args = parser.parse_args(argv)
    sizes = sorted(set(args.sizes))
    if args.setup_into is not None:
        export_model(args.setup_into / "resnet20.onnx")
        for n in sizes:
            write_digit_folder(args.setup_into / f"digits_{n}", n)
        return 0
    if len(sizes) < 2 or sizes[0] < 16:
        parser.error("give at least two sizes, each >= 16 (calibrate refuses fewer images)")

    with tempfile.TemporaryDirectory(prefix="rescompile-mem-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        # In a child: torch and the images would otherwise swell this process, whose RSS every
        # child inherits into its ru_maxrss at exec.
        setup = [sys.executable, __file__, "--setup-into", str(work), "--sizes", *map(str, sizes)]
        subprocess.run(setup, check=True, stdout=subprocess.DEVNULL)
        model, folders = work / "resnet20.onnx", {n: work / f"digits_{n}" for n in sizes}
        print(f"setup: resnet20 ONNX export and {sum(sizes)} PNGs in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

        runs = [measure(
            "imports", [sys.executable, "-c", "import numpy, onnx, onnxruntime, PIL.Image, rescompile.cli, "
                        "rescompile.stages.calibrate.stage, rescompile.pipeline"], work,
        )]  # fmt: skip
        for n in sizes:
            print(f"calibrating on {n} images ...", file=sys.stderr)
            runs.append(measure(f"calibrate_{n}", [
                sys.executable, "-m", "rescompile", "calibrate", str(model), "--data", str(folders[n]), "--num-images", str(n),
                "--batch-size", str(args.batch_size), "--method", args.method, "-o", str(work / f"out_{n}"), "--json",
            ], work))  # fmt: skip

    print(f"\nINT8 calibration peak RSS (resnet20, 32x32 PNG folder, --batch-size {args.batch_size}, --method {args.method}, "
          f"{os.cpu_count()} CPUs)")  # fmt: skip
    print(f"(this script's own peak RSS, the lowest a child can show: {floor:.0f} MiB)")
    print(f"{'run':<16} {'images':>7} {'peak RSS MiB':>13} {'wall s':>8} {'CPU s':>8} {'exit':>5}")
    for r in runs:
        shown = "-" if r.images is None else r.images
        print(f"{r.label:<16} {shown!s:>7} {r.peak_rss_mib:>13.1f} {r.wall_s:>8.1f} {r.cpu_s:>8.1f} {r.returncode:>5}")
    failed = [r for r in runs if r.returncode != 0]
    for r in failed:
        print(f"\n{r.label} failed (exit {r.returncode}):\n{r.stderr_tail}")
    if failed:
        return 1
    small, large = runs[1], runs[-1]
    ratio = large.peak_rss_mib / small.peak_rss_mib
    base = runs[0].peak_rss_mib
    per_image_kib = (large.peak_rss_mib - small.peak_rss_mib) * 1024 / (sizes[-1] - sizes[0])
    within = ratio <= args.limit
    print(
        f"\n{sizes[-1]} images use {ratio:.3f}x the peak RSS of {sizes[0]} "
        f"({'within' if within else 'OVER'} the {args.limit}x limit); {per_image_kib:+.1f} KiB per extra image; "
        f"imports alone take {base:.0f} MiB, so calibration itself adds {small.peak_rss_mib - base:.0f} MiB at "
        f"{sizes[0]} and {large.peak_rss_mib - base:.0f} MiB at {sizes[-1]} images"
    )
    print("memory is bounded by the batch size, not the image count" if within else "memory grows with the image count")
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
