"""The preprocessing a user names for a model from elsewhere: units, channel order, layout."""

from __future__ import annotations

import numpy as np
import pytest

from rescompile.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, PreprocessingOverride
from rescompile.errors import DataError

BASE = Preprocessing(8, IMAGENET_MEAN, IMAGENET_STD)
PIXELS = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)


def test_mean_std_in_0_255_units_equal_the_same_in_0_1_units():
    a = PreprocessingOverride(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)).apply(BASE)
    b = PreprocessingOverride(mean=IMAGENET_MEAN, std=IMAGENET_STD).apply(BASE)
    assert np.allclose(a.normalize(PIXELS), b.normalize(PIXELS), atol=1e-5)


def test_scale_255_alone_feeds_raw_pixels():
    p = PreprocessingOverride(scale=255).apply(BASE)
    assert np.allclose(p.normalize(PIXELS), PIXELS.transpose(0, 3, 1, 2).astype(np.float32), atol=1e-3)


def test_caffe_bgr_mean_subtraction():
    mean_bgr = (102.98, 115.95, 122.77)
    p = PreprocessingOverride(mean=mean_bgr, std=(1, 1, 1), channel_order="bgr").apply(BASE)
    want = PIXELS[..., ::-1].astype(np.float32) - np.asarray(mean_bgr, np.float32)
    assert np.allclose(p.normalize(PIXELS), want.transpose(0, 3, 1, 2), atol=1e-3)


def test_nhwc_layout_keeps_channels_last():
    p = Preprocessing(8, (0, 0, 0), (1, 1, 1), layout="nhwc")
    assert p.shape == (8, 8, 3) and p(PIXELS).shape == (2, 8, 8, 3)
    assert Preprocessing.from_dict(p.to_dict()) == p
    assert Preprocessing.from_dict({"input_size": 8, "mean": [0, 0, 0], "std": [1, 1, 1]}).layout == "nchw"  # older manifests


def test_resize_and_crop_and_size():
    p = PreprocessingOverride(input_size=6, resize=7).apply(BASE)
    assert (p.input_size, p.resize) == (6, 7) and p(PIXELS).shape == (2, 3, 6, 6)


@pytest.mark.parametrize("kw, pattern", [
    (dict(mean=(0.5, 0.5, 0.5)), "go together"),
    (dict(mean=(1, 2), std=(1, 1)), "1 or 3 values"),
    (dict(scale=0), "must be positive"),
])
def test_bad_combinations_are_one_line_errors(kw, pattern):
    with pytest.raises(DataError, match=pattern):
        PreprocessingOverride(**kw)


def test_bad_layout_or_order_in_a_spec_is_refused():
    with pytest.raises(DataError, match="layout"):
        Preprocessing(8, layout="chwn")
    with pytest.raises(DataError, match="channel order"):
        Preprocessing(8, channel_order="rbg")
