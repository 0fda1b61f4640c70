"""CIFAR-10 from its published on-disk formats.

Both formats from the CIFAR-10 site are read without executing anything:
- ``cifar-10-batches-py``: pickled dicts, read with an unpickler that only admits the
  numpy array constructors those files use (a pickle that tries anything else is refused);
- ``cifar-10-batches-bin``: records of 1 label byte + 3,072 pixel bytes (R, G, B planes).
Downloading goes through torchvision's CIFAR10 (checksummed) and only when asked.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from rescompile._lazy import import_optional
from rescompile.errors import DataError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_TEST_BATCH = "test_batch"
_RECORD = 1 + 32 * 32 * 3

# (module, name) pairs a CIFAR python batch may reference.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle API
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_py_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            batch = _ArrayOnlyUnpickler(io.BytesIO(fh.read()), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch.get(b"labels", batch.get(b"fine_labels")), dtype=np.int64)
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{path} is not a CIFAR-10 python batch ({exc})", "Re-download CIFAR-10 with --download") from exc
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{path} has data of shape {data.shape}, expected (N, 3072)", "Re-download CIFAR-10")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def _read_bin_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _RECORD:
        raise DataError(f"{path} is {raw.size} bytes, not a whole number of CIFAR-10 records", "Re-download CIFAR-10")
    rec = raw.reshape(-1, _RECORD)
    images = rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    return images, rec[:, 0].astype(np.int64)


def _find_dir(root: Path) -> tuple[Path, str] | None:
    for candidate in (root, root / "cifar-10-batches-py", root / "cifar-10-batches-bin"):
        if (candidate / _TEST_BATCH).is_file():
            return candidate, "py"
        if (candidate / f"{_TEST_BATCH}.bin").is_file():
            return candidate, "bin"
    return None


def _download(root: Path) -> None:
    tv = import_optional("torchvision")
    try:
        tv.datasets.CIFAR10(str(root), train=True, download=True)
    except Exception as exc:  # URLError, HTTPError, checksum errors
        raise DataError(
            f"could not download CIFAR-10 into {root} ({exc.__class__.__name__}: {exc})",
            "Check the network, or copy cifar-10-python.tar.gz's extracted folder there by hand",
        ) from exc


def load_cifar10(root: Path, download: bool = False):
    """Return (train_x, train_y, test_x, test_y, classes); images uint8 (N, 32, 32, 3)."""
    root = root.expanduser()
    found = _find_dir(root)
    if found is None and download:
        root.mkdir(parents=True, exist_ok=True)
        _download(root)
        found = _find_dir(root)
    if found is None:
        raise DataError(
            f"no CIFAR-10 batches under {root} (looked for cifar-10-batches-py/ and cifar-10-batches-bin/)",
            "Pass the folder that holds them with --data-dir, or add --download to fetch them",
        )
    folder, kind = found
    reader = _read_py_batch if kind == "py" else _read_bin_batch
    suffix = "" if kind == "py" else ".bin"
    train_files = [folder / f"{name}{suffix}" for name in _TRAIN_BATCHES if (folder / f"{name}{suffix}").is_file()]
    if not train_files:
        raise DataError(f"{folder} has a test batch but no data_batch_* files", "Re-download CIFAR-10")
    parts = [reader(f) for f in train_files]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = reader(folder / f"{_TEST_BATCH}{suffix}")
    for labels, what in ((train_y, "train"), (test_y, "test")):
        if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
            raise DataError(f"CIFAR-10 {what} labels outside 0..9 in {folder}", "Re-download CIFAR-10")
    return train_x, train_y, test_x, test_y, CLASSES
