"""What a .npy/.npz array of images or model-ready tensors holds, read from its header alone."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np


def _header_shape(fp) -> tuple[int, ...]:
    fmt = np.lib.format
    version = fmt.read_magic(fp)
    reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    return tuple(reader(fp)[0])


def array_image_size(dataset: str | Path) -> int | None:
    """The square image size of a .npy array (or a .npz's ``images``, ``x`` or ``data``) shaped [N, C, H, W], [N, H, W, C]
    or [N, H, W], with 1 or 3 channels; None for anything else (a folder, a named dataset, a damaged
    file: loading the data later says what is wrong with it)."""
    path = Path(dataset)
    try:
        if path.suffix.lower() == ".npy" and path.is_file():
            with open(path, "rb") as fp:
                shape = _header_shape(fp)
        elif path.suffix.lower() == ".npz" and path.is_file():
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
                key = next((k for k in ("images.npy", "x.npy", "data.npy") if k in names), None)  # as the loader picks
                if key is None:
                    return None
                with zf.open(key) as fp:
                    shape = _header_shape(fp)
        else:
            return None
    except Exception:  # noqa: BLE001  numpy and zipfile raise many types for a bad header; the loader reports it
        return None
    if len(shape) == 3:
        h, w = shape[1:]
    elif len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3):
        h, w = shape[2:]
    elif len(shape) == 4 and shape[3] in (1, 3):
        h, w = shape[1:3]
    else:
        return None
    return int(h) if h == w and h > 0 else None
