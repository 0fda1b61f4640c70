"""Write a small, balanced INT8 calibration set of real handwritten digits as PNG files.

The images come only from the TRAIN split of rescompile's ``digits`` dataset (scikit-learn's
bundled 8x8 digits, upscaled to 32x32 RGB). The val/test splits are never touched: the test
split is what measures accuracy, so calibrating on it would leak it.

Layout: ``<out>/<class>/<class>_<index in train split>.png``, the first ``--per-class``
images of each class in train-split order (deterministic: the split itself is fixed).

    python calibration/make_digits_samples.py            # -> calibration/digits, 50 per class
    python calibration/make_digits_samples.py --force    # regenerate, replacing its contents
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(HERE.parent))

from rescompile.data.datasets import load_dataset  # noqa: E402


def _unsafe_to_clear(out: Path) -> str | None:
    """Why ``out`` must never be emptied by --force, or None when it is fine."""
    resolved = out.resolve()
    if resolved == Path(resolved.anchor):
        return "it is a filesystem root"
    if resolved == Path.home().resolve():
        return "it is the home directory"
    if resolved in (HERE, HERE.parent) or resolved in HERE.parents:
        return "it holds this script"
    return None


def _clear(out: Path) -> None:
    """Remove everything inside ``out`` (never follows symbolic links out of it)."""
    for child in out.iterdir():
        if child.is_symlink() or not child.is_dir():
            child.unlink()
        else:
            shutil.rmtree(child)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "digits", help="output folder (default: %(default)s)")
    parser.add_argument("--per-class", type=int, default=50, help="images per class (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="replace the contents of a non-empty --out")
    args = parser.parse_args(argv)

    out: Path = args.out
    if args.per_class < 1:
        parser.error("--per-class must be at least 1")
    if out.exists() and not out.is_dir():
        parser.error(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not args.force:
            parser.error(f"{out} exists and is not empty; add --force to replace its contents")
        reason = _unsafe_to_clear(out)
        if reason:
            parser.error(f"refusing to empty {out}: {reason}")

    splits = load_dataset("digits")
    train = splits.train  # ArrayImages: uint8 (N, 32, 32, 3) and int64 labels
    images, labels, classes = train.array, np.asarray(train.labels), splits.classes

    chosen: dict[int, np.ndarray] = {}
    for label in range(len(classes)):
        idx = np.flatnonzero(labels == label)
        if len(idx) < args.per_class:
            parser.error(f"class {classes[label]!r} has only {len(idx)} train images (< --per-class {args.per_class})")
        chosen[label] = idx[: args.per_class]

    if out.is_dir():
        _clear(out)
    out.mkdir(parents=True, exist_ok=True)

    total = 0
    for label, idx in chosen.items():
        name = classes[label]
        folder = out / name
        folder.mkdir()
        for i in idx:
            Image.fromarray(np.ascontiguousarray(images[i])).save(folder / f"{name}_{int(i)}.png")
        total += len(idx)
        print(f"{folder}: {len(idx)} images (train indices {int(idx[0])}..{int(idx[-1])})")
    size = sum(f.stat().st_size for f in out.rglob("*.png"))
    print(f"wrote {total} PNGs ({len(chosen)} classes x {args.per_class}, 32x32 RGB, {size / 1024:.0f} KiB) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
