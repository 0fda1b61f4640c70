"""Accuracy tolerances stated in samples of the set they are measured on.

A model trained or quantized inside a test is not the same model on every machine: PyTorch's and
ONNX Runtime's kernels sum in a different order on AVX2, AVX-512, VNNI or AMX, so the weights, the
calibration statistics and therefore which borderline image flips differ from CPU to CPU. A bound
finer than one image (a drop of 0.1 points on 540 images, 0.54 of an image) asserts that no image
ever flips, which holds on one machine and fails on the next. So every accuracy, agreement or drop
bound in this suite is written as a whole number of samples of its evaluation set, with the reason,
and this module refuses a bound of less than one sample, or one that would allow every sample.

    tol = Tolerance(flips=2, of=len(labels), why="...")
    tol.check_agreement(pred, ref)        # at most 2 images predicted differently from FP32
    tol.check_drop(pred, ref, labels)     # top-1 at most 2 images below FP32's
    tol.check_agreement_rate(0.9963)      # a rate someone else measured on `of` samples
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# A rate computed as k / n and compared against m / n can differ by rounding in the last bit.
_EPS = 1e-9


class ToleranceTooFine(ValueError):
    """A tolerance finer than one sample of its evaluation set (or one that allows every sample)."""


@dataclass(frozen=True)
class Tolerance:
    """At most `flips` of `of` samples may go the other way; `why` says where the number comes from."""

    flips: int
    of: int
    why: str

    def __post_init__(self) -> None:
        if not isinstance(self.flips, (int, np.integer)) or not isinstance(self.of, (int, np.integer)):
            raise ToleranceTooFine(f"state a tolerance in whole samples (got flips={self.flips!r}, of={self.of!r})")
        if self.of < 1:
            raise ToleranceTooFine(f"an evaluation set of {self.of} samples measures nothing")
        if self.flips < 1:
            raise ToleranceTooFine(
                f"a tolerance of {self.flips} of {self.of} samples is finer than one sample: a single borderline "
                f"image that flips on another CPU would fail it; allow at least 1 sample and say why")
        if self.flips >= self.of:
            raise ToleranceTooFine(f"{self.flips} of {self.of} samples allows every sample to flip: the check asserts nothing")
        if not self.why.strip():
            raise ToleranceTooFine("say why the tolerance is what it is")

    @classmethod
    def from_rate(cls, rate: float, of: int, why: str) -> Tolerance:
        """The largest whole number of samples within `rate` (a fraction) of `of`; refuses it below one."""
        flips = math.floor(rate * of + _EPS)
        if flips < 1:
            raise ToleranceTooFine(
                f"a rate of {rate:g} on {of} samples is {rate * of:.2f} samples, finer than one: "
                f"use a larger set or allow at least 1 of {of} ({1 / of:.4g})")
        return cls(flips, of, why)

    @property
    def rate(self) -> float:
        return self.flips / self.of

    @property
    def points(self) -> float:
        """The tolerance as percentage points of top-1."""
        return 100.0 * self.rate

    @property
    def min_agreement(self) -> float:
        return 1.0 - self.rate

    def _sized(self, n: int) -> None:
        if n != self.of:
            raise AssertionError(f"the tolerance was stated for {self.of} samples, the check got {n}")

    def check_agreement_rate(self, agreement: float, context: object = "") -> None:
        """`agreement` (a fraction measured on `of` samples) disagrees on at most `flips` samples."""
        if agreement < self.min_agreement - _EPS:
            raise AssertionError(f"{context} agreement {agreement:.4%}: {(1 - agreement) * self.of:.1f} of {self.of} "
                                 f"samples differ, more than the {self.flips} allowed ({self.why})")

    def check_drop_points(self, drop_points: float, context: object = "") -> None:
        """A top-1 drop in points (positive = worse), measured on `of` samples, is at most `flips` samples."""
        if drop_points > self.points + 100 * _EPS:
            raise AssertionError(f"{context} top-1 drop {drop_points:.3f} points = {drop_points * self.of / 100:.1f} of "
                                 f"{self.of} samples, more than the {self.flips} allowed ({self.why})")

    def check_gap_points(self, gap_points: float, context: object = "") -> None:
        """|a - b| in points within `flips` samples, either way."""
        self.check_drop_points(abs(gap_points), context)

    def check_agreement(self, pred, ref, context: object = "") -> None:
        pred, ref = np.asarray(pred), np.asarray(ref)
        self._sized(len(ref))
        differ = int((pred != ref).sum())
        if differ > self.flips:
            raise AssertionError(f"{context} {differ} of {self.of} predictions differ from the reference, "
                                 f"more than the {self.flips} allowed ({self.why})")

    def check_drop(self, pred, ref, labels, context: object = "") -> None:
        """Top-1 of `pred` is at most `flips` correct images below that of `ref`."""
        pred, ref, labels = np.asarray(pred), np.asarray(ref), np.asarray(labels)
        self._sized(len(labels))
        lost = int((ref == labels).sum()) - int((pred == labels).sum())
        if lost > self.flips:
            raise AssertionError(f"{context} {lost} of {self.of} images fewer right than the reference, "
                                 f"more than the {self.flips} allowed ({self.why})")
