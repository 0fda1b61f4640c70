"""Train ResNet-20 on the bundled digits with the default recipe; print wall time and test accuracy.

Target (2 CPU cores): >= 97% test top-1 in <= 5 minutes.

    python benchmarks/train_digits.py [--epochs 30] [--threads 2] [--arch resnet20]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from dataclasses import replace

TARGET_ACC = 0.97
TARGET_SECONDS = 300.0


def main() -> int:
    from rescompile.pipeline import DEFAULT_TRAIN
    from rescompile.train import train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=DEFAULT_TRAIN.epochs)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--arch", default=DEFAULT_TRAIN.arch)
    args = ap.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        config = replace(DEFAULT_TRAIN, arch=args.arch, epochs=args.epochs, num_threads=args.threads, output_dir=tmp)
        result = train(config)
    print(f"machine        : {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    print(f"model          : {args.arch} on digits ({config.epochs} epochs, {config.optimizer.value}, {config.schedule.value})")
    print(f"wall time      : {result.wall_time_s:.1f} s (target <= {TARGET_SECONDS:.0f} s)")
    print(f"best epoch     : {result.best_epoch} (val top-1 {result.best_val_acc:.2%})")
    print(f"test top-1     : {result.test_acc:.2%} on {result.test_images} held-out images (target >= {TARGET_ACC:.0%})")
    ok = result.test_acc >= TARGET_ACC and result.wall_time_s <= TARGET_SECONDS
    print("result         :", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
