from __future__ import annotations

import numpy as np
import pytest

from rescompile.config import DataConfig
from rescompile.data.datasets import load_dataset
from rescompile.data.images import iter_batches, stratified_split
from rescompile.data.preprocess import Preprocessing
from rescompile.errors import DataError
from tests.conftest import write_cifar_bin, write_cifar_py, write_image_folder


def test_digits_split_is_fixed_stratified_and_disjoint():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert (len(a.train), len(a.val), len(a.test)) == (1258, 179, 360)
    assert np.array_equal(a.test.array, b.test.array)
    assert a.train.array.shape[1:] == (32, 32, 3) and a.train.array.dtype == np.uint8
    assert set(np.unique(a.test.labels)) == set(range(10))
    # disjoint: no test image appears in train
    train_keys = {x.tobytes() for x in a.train.array}
    assert sum(x.tobytes() in train_keys for x in a.test.array) < 5  # a few digits are pixel-identical
    assert not a.allow_hflip


def test_preprocessing_normalizes_and_resizes():
    p = Preprocessing(4, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    img = np.full((8, 6, 3), 255, np.uint8)
    x = p(img)
    assert x.shape == (1, 3, 4, 4) and np.allclose(x, 2.0)
    crop = Preprocessing(4, (0, 0, 0), (1, 1, 1), resize=8, interpolation="nearest")
    wide = np.zeros((10, 20, 3), np.uint8)
    wide[:, 9:11] = 255  # 10x20 -> 8x16 -> centre 4x4 crop: the bright columns land at 1-2
    y = crop(wide)
    assert y.shape == (1, 3, 4, 4) and y[0, 0, :, 1:3].min() == 1.0 and y[0, 0, :, [0, 3]].max() == 0.0
    gray = p(np.zeros((4, 4), np.uint8))
    assert gray.shape == (1, 3, 4, 4)
    assert Preprocessing.from_dict(crop.to_dict()) == crop


def test_iter_batches_bounded_and_ordered():
    d = load_dataset("digits")
    batches = list(iter_batches(d.test, d.preprocessing, 100))
    assert [len(x) for x, _ in batches] == [100, 100, 100, 60]
    assert np.array_equal(np.concatenate([y for _, y in batches]), d.test.labels)
    shuffled = np.concatenate([y for _, y in iter_batches(d.test, d.preprocessing, 100, shuffle=True, seed=3)])
    assert sorted(shuffled) == sorted(d.test.labels) and not np.array_equal(shuffled, d.test.labels)


def test_image_folder_split_classes_and_default_size(tmp_path):
    root = write_image_folder(tmp_path / "imgs", per_class=10)
    d = load_dataset(str(root))
    assert d.classes == ("cat", "dog", "owl")
    assert len(d.train) + len(d.val) + len(d.test) == 30
    assert d.preprocessing.input_size == 20
    x, y = next(iter_batches(d.train, d.preprocessing, 4))
    assert x.shape == (4, 3, 20, 20) and x.dtype == np.float32 and y.dtype == np.int64


def test_image_folder_with_train_val_test(tmp_path):
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        write_image_folder(tmp_path / "ds" / split, per_class=n)
    d = load_dataset(str(tmp_path / "ds"))
    assert (len(d.train), len(d.val), len(d.test)) == (15, 6, 9)


def test_image_folder_skips_corrupt_files_and_rejects_empty(tmp_path, caplog):
    root = write_image_folder(tmp_path / "imgs", per_class=4)
    (root / "cat" / "broken.png").write_bytes(b"not a png")
    d = load_dataset(str(root))
    assert len(d.train) + len(d.val) + len(d.test) == 12
    assert "skipped 1 unreadable image" in caplog.text
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no readable images"):
        load_dataset(str(empty))
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(str(tmp_path / "flat"))


def test_unknown_dataset_and_wrong_file(tmp_path):
    with pytest.raises(DataError, match="neither a known name nor an existing path"):
        load_dataset("imagenet")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="not a .npy/.npz array"):
        load_dataset(str(tmp_path / "x.txt"))


def test_cifar10_python_batches(tmp_path):
    write_cifar_py(tmp_path)
    d = load_dataset(DataConfig("cifar10", data_dir=tmp_path))
    assert len(d.train) + len(d.val) == 100 and len(d.test) == 10
    assert d.classes[0] == "airplane" and d.allow_hflip
    assert d.train.array.shape[1:] == (32, 32, 3)


def test_cifar10_python_batch_layout_is_channel_planes(tmp_path):
    import pickle

    write_cifar_py(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as fh:
        raw = pickle.load(fh, encoding="bytes")
    d = load_dataset(DataConfig("cifar10", data_dir=tmp_path))
    first = raw[b"data"][0]
    assert np.array_equal(d.test.array[0][..., 0].ravel(), first[:1024])  # red plane
    assert np.array_equal(d.test.array[0][..., 2].ravel(), first[2048:])  # blue plane
    assert d.test.labels[0] == raw[b"labels"][0]


def test_cifar10_binary_batches(tmp_path):
    write_cifar_bin(tmp_path)
    d = load_dataset(DataConfig("cifar10", data_dir=tmp_path / "cifar-10-batches-bin"))
    assert len(d.test) == 12 and len(d.train) + len(d.val) == 60


def test_cifar10_refuses_pickles_with_code_and_missing_data(tmp_path):
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo hacked",))

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for name in ["data_batch_1", "test_batch"]:
        with open(d / name, "wb") as fh:
            pickle.dump({b"data": Evil(), b"labels": [0]}, fh)
    with pytest.raises(DataError, match="not a CIFAR-10 python batch.*refusing"):
        load_dataset(DataConfig("cifar10", data_dir=tmp_path))
    with pytest.raises(DataError, match="needs --data-dir"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="no CIFAR-10 batches under"):
        load_dataset(DataConfig("cifar10", data_dir=tmp_path / "nothing"))


def test_cifar10_download_offline_is_clear(tmp_path, monkeypatch):
    import torchvision

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(DataError, match="could not download CIFAR-10"):
        load_dataset(DataConfig("cifar10", data_dir=tmp_path / "c", download=True))


def test_npz_and_npy_arrays(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (40, 3, 16, 16), dtype=np.uint8)  # NCHW is accepted
    np.savez(tmp_path / "d.npz", images=imgs, labels=np.arange(40) % 4)
    d = load_dataset(str(tmp_path / "d.npz"))
    assert d.num_classes == 4 and d.train.array.shape[1:] == (16, 16, 3)
    np.save(tmp_path / "floats.npy", rng.random((10, 16, 16, 3)).astype(np.float32))
    u = load_dataset(str(tmp_path / "floats.npy"))
    assert u.train.labels is None and u.train.array.dtype == np.uint8
    with pytest.raises(DataError, match="needs labelled images"):
        u.train.require_labels("training")


def test_arrays_with_nan_wrong_range_or_shape(tmp_path):
    bad = np.zeros((4, 8, 8, 3), np.float32)
    bad[0, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(DataError, match="1 NaN or infinite"):
        load_dataset(str(tmp_path / "nan.npy"))
    np.save(tmp_path / "norm.npy", np.full((4, 8, 8, 3), -1.5, np.float32))
    with pytest.raises(DataError, match="outside \\[0, 1\\]"):
        load_dataset(str(tmp_path / "norm.npy"))
    np.save(tmp_path / "shape.npy", np.zeros((4, 8, 8, 5), np.uint8))
    with pytest.raises(DataError, match="no axis of 1 or 3 channels"):
        load_dataset(str(tmp_path / "shape.npy"))
    np.savez(tmp_path / "mismatch.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.zeros(3))
    with pytest.raises(DataError, match="4 images but 3 labels"):
        load_dataset(str(tmp_path / "mismatch.npz"))
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(DataError, match="damaged numpy header"):
        load_dataset(str(tmp_path / "junk.npy"))


def test_stratified_split_keeps_class_proportions():
    labels = np.repeat(np.arange(5), 20)
    val, test, train = stratified_split(labels, 100, (0.1, 0.2), seed=1)
    assert (len(val), len(test), len(train)) == (10, 20, 70)
    assert all((labels[val] == c).sum() == 2 for c in range(5))
    assert not set(val) & set(train)


def test_oversized_image_files_are_skipped_unread(tmp_path, monkeypatch, caplog):
    import rescompile.data.datasets as datasets

    from tests.conftest import write_image_folder

    root = write_image_folder(tmp_path / "imgs", per_class=4, size=16)
    sizes = {p: p.stat().st_size for p in root.rglob("*.png")}
    limit = max(sizes.values()) - 1
    monkeypatch.setattr(datasets, "MAX_IMAGE_FILE_BYTES", limit)
    too_big = [p for p, n in sizes.items() if n > limit]
    splits = load_dataset(str(root))
    total = len(splits.train) + len(splits.val) + len(splits.test)
    assert total == len(sizes) - len(too_big) and too_big
    assert f"skipped {len(too_big)} unreadable image file" in caplog.text


def test_image_modes_from_other_tools_read_as_the_same_rgb_pixels(tmp_path):
    """One picture saved as 8-bit grey, 16-bit grey (scientific/medical PNGs), RGBA, palette and CMYK JPEG
    reads as the same RGB pixels from a folder and in the runtime; 16-bit is scaled, not clipped at 255."""
    from PIL import Image

    from rescompile.data.images import FileImages
    from rescompile.runtime.base import read_image

    grey = np.kron(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, np.ones((4, 4), np.uint8))  # 0..252
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    files = {
        "grey8.png": Image.fromarray(grey),
        "grey16.png": Image.fromarray(grey.astype(np.uint16) * 257),
        "rgba.png": Image.fromarray(np.concatenate([rgb, np.full_like(grey, 255)[:, :, None]], axis=2)),
        "palette.bmp": Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=256),  # 64 greys: lossless
        "rgb.png": Image.fromarray(rgb),
    }
    for name, img in files.items():
        img.save(tmp_path / name)
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")  # Pillow's 16-bit mode, the case under test
    paths = [tmp_path / name for name in files]
    loaded = FileImages(paths, None, ())
    for i, path in enumerate(paths):
        for pixels in (loaded.image(i), read_image(path), read_image(Image.open(path))):
            assert pixels.dtype == np.uint8 and pixels.shape == rgb.shape, path.name
            assert np.abs(pixels.astype(int) - rgb).max() <= 1, path.name
