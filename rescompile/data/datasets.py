"""Load the supported datasets into train/val/test ImageSets with a default preprocessing.

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 real images, offline),
  upscaled to 32x32 RGB, with a fixed stratified 70/10/20 split.
- ``cifar10``: the CIFAR-10 python or binary batches under ``data_dir``; downloaded through
  torchvision only when asked.
- an image folder: one sub-folder per class, optionally already split into train/val/test.
- a ``.npz`` (``images`` + ``labels``) or ``.npy`` (images only) array file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rescompile._io import expand_user
from rescompile._lazy import import_optional
from rescompile.config import DataConfig
from rescompile.data import cifar
from rescompile.data.images import IMAGE_SUFFIXES, ArrayImages, FileImages, ImageSet, TensorSet, stratified_split
from rescompile.data.preprocess import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from rescompile.errors import DataError

log = logging.getLogger(__name__)

DIGITS_SIZE = 32
# Digits split: 70% train, 10% val, 20% test, stratified, seed 0 (never changes, so test
# accuracy is comparable across runs and versions).
_DIGITS_FRACTIONS = (0.7, 0.1)
_DIGITS_SEED = 0


@dataclass
class DatasetSplits:
    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet
    classes: tuple[str, ...]
    preprocessing: Preprocessing  # the default for models trained on this data
    allow_hflip: bool  # mirrored images keep their label (not true for digits)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


DATA_FORMATS = ("auto", "images", "tensors")


def load_dataset(
    config: DataConfig | str = DataConfig(), input_size: int | None = None, model_input: tuple[int, ...] | None = None,
) -> DatasetSplits:
    """Load a dataset by name or path. ``input_size`` overrides the default preprocessing size;
    ``model_input`` (one image as the model takes it, e.g. (3, 32, 32)) lets .npy/.npz arrays be
    recognised as model-ready tensors (see DataConfig.data_format)."""
    if isinstance(config, str):
        config = DataConfig(dataset=config)
    if config.data_format not in DATA_FORMATS:
        raise DataError(f"unknown data format {config.data_format!r}", f"Use one of: {', '.join(DATA_FORMATS)}")
    name = config.dataset
    path = None if name in ("digits", "cifar10", "cifar-10") else expand_user(name)
    if config.data_format == "tensors" and (path is None or path.suffix not in (".npy", ".npz")):
        raise DataError(f"--data-format tensors takes a .npy/.npz array, not {name!r}", "Save the tensors with numpy.save, or drop --data-format")
    if name == "digits":
        splits = _digits()
    elif name in ("cifar10", "cifar-10"):
        splits = _cifar10(config)
    else:
        path = expand_user(name)
        if not path.exists():
            raise DataError(
                f"dataset {name!r} is neither a known name nor an existing path",
                "Use 'digits', 'cifar10' (with --data-dir), an image folder, or a .npy/.npz file",
            )
        if path.is_dir():
            splits = _image_folder(path, config)
        elif path.suffix in (".npy", ".npz"):
            splits = _arrays(path, config, model_input)
        else:
            raise DataError(
                f"{path} is a file but not a .npy/.npz array",
                "Pass an image folder (one sub-folder per class) or a .npy/.npz file",
            )
    if input_size is not None and input_size != splits.preprocessing.input_size:
        p = splits.preprocessing
        splits.preprocessing = Preprocessing(input_size, p.mean, p.std, None, p.interpolation)
    return splits


# -- digits ------------------------------------------------------------------------------
def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as uint8 (N, 32, 32, 3) RGB and int64 labels."""
    from PIL import Image
    load_digits = import_optional("sklearn.datasets").load_digits

    bunch = load_digits()
    raw = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    big = np.stack(
        [np.asarray(Image.fromarray(im).resize((DIGITS_SIZE, DIGITS_SIZE), Image.BILINEAR)) for im in raw]
    )
    rgb = np.repeat(big[:, :, :, None], 3, axis=3)
    return rgb, bunch.target.astype(np.int64)


def _digits() -> DatasetSplits:
    images, labels = digits_images()
    train_idx, val_idx, test_idx = stratified_split(labels, len(labels), _DIGITS_FRACTIONS, _DIGITS_SEED)
    classes = tuple(str(i) for i in range(10))
    full = ArrayImages(images, labels, classes)
    train = full.subset(train_idx)
    # Mean/std of the training split, rounded so the spec is readable in manifests.
    pixels = train.array[..., 0].astype(np.float64) / 255.0
    mean, std = round(float(pixels.mean()), 4), round(float(pixels.std()), 4)
    prep = Preprocessing(DIGITS_SIZE, (mean,) * 3, (std,) * 3)
    return DatasetSplits("digits", train, full.subset(val_idx), full.subset(test_idx), classes, prep, False)


# -- CIFAR-10 ----------------------------------------------------------------------------
def _cifar10(config: DataConfig) -> DatasetSplits:
    if config.data_dir is None:
        raise DataError(
            "cifar10 needs --data-dir: the folder holding cifar-10-batches-py (or -bin)",
            "Add --data-dir DIR, and --download to fetch CIFAR-10 into it when online",
        )
    train_x, train_y, test_x, test_y, classes = cifar.load_cifar10(Path(config.data_dir), download=config.download)
    val_idx, train_idx = stratified_split(train_y, len(train_y), (config.val_fraction,), config.seed)
    full = ArrayImages(train_x, train_y, classes)
    prep = Preprocessing(32, CIFAR10_MEAN, CIFAR10_STD)
    test = ArrayImages(test_x, test_y, classes)
    return DatasetSplits("cifar10", full.subset(train_idx), full.subset(val_idx), test, classes, prep, True)


# -- image folders -----------------------------------------------------------------------
def _list_class_folder(root: Path) -> tuple[list[Path], list[int], tuple[str, ...]]:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"image folder {root} has no class sub-folders",
            "Put each class's images in its own sub-folder: ROOT/<class name>/<image>.png",
        )
    paths, labels = [], []
    for label, d in enumerate(class_dirs):
        for f in sorted(d.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(f)
                labels.append(label)
    return paths, labels, tuple(d.name for d in class_dirs)


def _readable(paths: list[Path], labels: list[int], where: Path) -> tuple[list[Path], np.ndarray]:
    """Drop files Pillow cannot identify, with a count; fail if none are left."""
    from PIL import Image

    good_paths, good_labels, bad = [], [], []
    for path, label in zip(paths, labels):
        try:
            if path.stat().st_size > MAX_IMAGE_FILE_BYTES:  # not an image a classifier is calibrated on
                raise ValueError("too large")
            with Image.open(path) as img:
                img.verify()
        except Exception:  # Pillow raises many types for corrupt files
            bad.append(path)
            continue
        good_paths.append(path)
        good_labels.append(label)
    if bad:
        log.warning("skipped %d unreadable image file(s) in %s (first: %s)", len(bad), where, bad[0])
    if not good_paths:
        raise DataError(
            f"image folder {where} holds no readable images ({len(bad)} unreadable)",
            f"Add {', '.join(IMAGE_SUFFIXES[:3])} files under one sub-folder per class",
        )
    return good_paths, np.asarray(good_labels, dtype=np.int64)


def _image_folder(root: Path, config: DataConfig) -> DatasetSplits:
    pre_split = (root / "train").is_dir() and ((root / "val").is_dir() or (root / "test").is_dir())
    if pre_split:
        paths, labels, classes = _list_class_folder(root / "train")
        train = FileImages(*_readable(paths, labels, root / "train"), classes)
        parts = {}
        for split in ("val", "test"):
            if (root / split).is_dir():
                p, lab, cls = _list_class_folder(root / split)
                if cls != classes:
                    raise DataError(
                        f"{root / split} has classes {list(cls)} but train has {list(classes)}",
                        "Use the same class sub-folders in every split",
                    )
                parts[split] = FileImages(*_readable(p, lab, root / split), classes)
        val = parts.get("val", parts.get("test"))
        test = parts.get("test", parts.get("val"))
    else:
        paths, labels, classes = _list_class_folder(root)
        files, label_arr = _readable(paths, labels, root)
        every = FileImages(files, label_arr, classes)
        val_idx, test_idx, train_idx = stratified_split(
            label_arr, len(files), (config.val_fraction, config.test_fraction), config.seed
        )
        train, val, test = every.subset(train_idx), every.subset(val_idx), every.subset(test_idx)
    size = _probe_size(train)
    prep = Preprocessing(size, IMAGENET_MEAN, IMAGENET_STD, resize=None if size <= 64 else round(size * 256 / 224))
    return DatasetSplits(root.name, train, val, test, classes, prep, True)


def _probe_size(images: ImageSet) -> int:
    """Default input size for a folder: its first image's shorter side, capped at 224."""
    first = images.image(0)
    return int(min(224, min(first.shape[:2])))


# -- arrays ------------------------------------------------------------------------------
def images_from_array(array: np.ndarray, source: str) -> np.ndarray:
    """Normalise an image array to uint8 (N, H, W, 3); accept NCHW/NHWC/NHW, uint8 or floats in [0, 1]."""
    arr = np.asarray(array)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise DataError(f"{source} contains {bad} NaN or infinite value(s)", "Clean or regenerate the array")
        if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
            raise DataError(
                f"{source} holds floats outside [0, 1] (min {arr.min():.3g}, max {arr.max():.3g}) in shape {list(arr.shape)}",
                "Store raw uint8 pixels or floats in [0, 1], or model-ready tensors shaped exactly like the model input"
                " (N, C, H, W) (--data-format tensors)",
            )
        arr = np.round(arr * 255.0).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise DataError(f"{source} has dtype {arr.dtype}", "Store images as uint8 pixels or floats in [0, 1]")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise DataError(f"{source} has shape {arr.shape}", "Expected images as (N, H, W[, C]) or (N, C, H, W)")
    if arr.shape[3] not in (1, 3) and arr.shape[1] in (1, 3):
        arr = arr.transpose(0, 2, 3, 1)
    if arr.shape[3] not in (1, 3):
        raise DataError(f"{source} has shape {arr.shape}: no axis of 1 or 3 channels", "Store RGB or grayscale images")
    if len(arr) == 0:
        raise DataError(f"{source} holds no images", "Provide a non-empty array")
    if arr.shape[3] == 1:
        arr = np.repeat(arr, 3, axis=3)
    return np.ascontiguousarray(arr)


MAX_IMAGE_FILE_BYTES = 64 << 20  # a 224x224 (or even 4K) photo is far smaller
# Bounds on what an array file may declare, checked before numpy allocates anything.
MAX_ARRAY_BYTES = 8 << 30
MAX_CLASSES = 100_000  # ImageNet-21k has 21,841; a label past this is a damaged file


def _checked_array(fp, source: str, available: int) -> np.ndarray:
    """Read one .npy stream after checking its header: no object (pickled) arrays, and no shape
    bigger than the bytes that are there. numpy raises a zoo of exception types for damaged
    headers and data (ValueError, EOFError, tokenize.TokenError, MemoryError, zlib.error, ...):
    every one becomes a DataError."""
    fmt = np.lib.format
    try:
        start = fp.tell()
        version = fmt.read_magic(fp)
        reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _fortran, dtype = reader(fp)
        header = fp.tell() - start
    except Exception as exc:  # noqa: BLE001 - see docstring
        raise DataError(f"{source} has a damaged numpy header ({exc.__class__.__name__})", "Save the array again with numpy.save") from None
    if dtype.hasobject:
        raise DataError(f"{source} holds Python objects (a pickled array), which are never loaded", "Save plain numeric arrays")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES or nbytes > available - header:
        raise DataError(
            f"{source} declares a {'x'.join(map(str, shape))} {dtype} array ({nbytes} bytes) but holds {max(0, available - header)}",
            "The file is damaged or truncated: save it again",
        )
    try:
        fp.seek(start)
        return fmt.read_array(fp, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - see docstring
        raise DataError(f"cannot read {source} ({exc.__class__.__name__})", "Save the array again with numpy.save") from None


def _npz_member(zf, name: str, source: str) -> np.ndarray:
    info = zf.getinfo(name)
    with zf.open(info) as fp:
        return _checked_array(_Seekable(fp), f"{source}[{name[:-4]}]", info.file_size)


class _Seekable:
    """Zip members cannot seek back; numpy needs to re-read the header once (at most a few KB)."""

    def __init__(self, fp) -> None:
        self._fp, self._buf, self._pos = fp, b"", 0

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int) -> None:
        if pos > len(self._buf):
            raise ValueError("cannot seek forward")
        self._pos = pos

    def read(self, n: int = -1) -> bytes:
        out = b""
        if self._pos < len(self._buf):
            out = self._buf[self._pos : self._pos + n] if n >= 0 else self._buf[self._pos :]
            self._pos += len(out)
            if n >= 0:
                n -= len(out)
        if n != 0:
            more = self._fp.read(n) if n > 0 else self._fp.read()
            if len(self._buf) < 1 << 16:  # keep the start (the header) for one seek back
                self._buf += more
            self._pos += len(more)
            out += more
        return out

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _labels(raw: np.ndarray, source: str) -> np.ndarray:
    arr = np.asarray(raw).reshape(-1)
    if arr.dtype.kind == "f" and arr.size and np.isfinite(arr).all() and (arr == np.round(arr)).all():
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise DataError(f"{source}: labels of type {arr.dtype} are not class indices", "Store labels as integers 0..K-1")
    return arr.astype(np.int64)


def _tensors_or_none(array: np.ndarray, source: str, data_format: str, model_input: tuple[int, ...] | None) -> np.ndarray | None:
    """``array`` as model-ready float32 tensors when that is what it is (or was said to be), else None."""
    arr = np.asarray(array)
    fits = model_input is not None and arr.ndim == 4 and tuple(arr.shape[1:]) == tuple(model_input)
    if data_format == "images":
        return None
    if data_format == "auto":
        if arr.dtype.kind != "f" or not fits or not arr.size or not np.isfinite(arr).all():
            return None
        if 0.0 <= float(arr.min()) and float(arr.max()) <= 1.0:
            log.warning("%s: floats in [0, 1] shaped like the model input are taken as images (normalised by the model's "
                        "preprocessing); pass --data-format tensors if they are model-ready", source)
            return None
    if arr.dtype.kind != "f":
        raise DataError(f"{source} has dtype {arr.dtype}, but model-ready tensors are floats", "Save them as float32, or drop --data-format tensors")
    if not fits:
        want = "?" if model_input is None else ",".join(map(str, model_input))
        raise DataError(f"{source} holds tensors of shape [{','.join(map(str, arr.shape))}], but the model takes [N,{want}]",
                        "Save them shaped exactly like the model input (layout included), or pass images instead")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise DataError(f"{source} contains {bad} NaN or infinite value(s)", "Clean or regenerate the tensors")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _arrays(path: Path, config: DataConfig, model_input: tuple[int, ...] | None = None) -> DatasetSplits:
    import zipfile

    labels = None
    classes: tuple[str, ...] = ()
    size = path.stat().st_size
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                keys = {n[:-4] for n in zf.namelist() if n.endswith(".npy")}
                key = next((k for k in ("images", "x", "data") if k in keys), None)
                if key is None:
                    raise DataError(f"{path} has arrays {sorted(keys)[:10]} but no 'images'", "Save images under the key 'images'")
                raw = _npz_member(zf, key + ".npy", str(path))
                tensors = _tensors_or_none(raw, f"{path}[{key}]", config.data_format, model_input)
                images = tensors if tensors is not None else images_from_array(raw, f"{path}[{key}]")
                lkey = next((k for k in ("labels", "y", "targets") if k in keys), None)
                if lkey is not None:
                    labels = _labels(_npz_member(zf, lkey + ".npy", str(path)), str(path))
                if "classes" in keys:
                    names = _npz_member(zf, "classes.npy", str(path)).reshape(-1)
                    if names.dtype.kind not in "USiu":
                        raise DataError(f"{path}: class names of type {names.dtype}", "Store class names as strings")
                    classes = tuple(str(c)[:200] for c in names)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise DataError(f"cannot read {path} as a .npz archive ({exc.__class__.__name__})", "Save it again with numpy.savez") from None
    else:
        try:
            with open(path, "rb") as fp:
                array = _checked_array(fp, str(path), size)
        except OSError as exc:
            raise DataError(f"cannot read {path} ({exc.strerror or exc})", "Check the file") from None
        tensors = _tensors_or_none(array, str(path), config.data_format, model_input)
        images = tensors if tensors is not None else images_from_array(array, str(path))
    if labels is not None:
        if len(labels) != len(images):
            raise DataError(f"{path}: {len(images)} images but {len(labels)} labels", "Store one label per image")
        if labels.min() < 0:
            raise DataError(f"{path}: negative labels", "Labels must be class indices 0..K-1")
        top = int(labels.max())
        if classes and top >= len(classes):
            raise DataError(f"{path}: label {top} but only {len(classes)} class names", "Labels must index the 'classes' array")
        if top >= MAX_CLASSES:
            raise DataError(f"{path}: label {top} is beyond {MAX_CLASSES} classes", "The labels are damaged: save them again")
        if not classes:
            classes = tuple(str(i) for i in range(top + 1))
    full = (TensorSet if tensors is not None else ArrayImages)(images, labels, classes)
    val_idx, test_idx, train_idx = stratified_split(
        labels, len(images), (config.val_fraction, config.test_fraction), config.seed
    )
    hw = images.shape[1:3] if tensors is None or images.shape[3] in (1, 3) else images.shape[2:4]
    size = hw[0] if hw[0] == hw[1] else min(hw)
    prep = Preprocessing(int(min(size, 224)), IMAGENET_MEAN, IMAGENET_STD)
    return DatasetSplits(path.stem, full.subset(train_idx), full.subset(val_idx), full.subset(test_idx), classes, prep, True)
