"""The accuracy-tolerance helper refuses bounds finer than one sample, and the suite uses it."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from tests.tolerance import Tolerance, ToleranceTooFine

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize("flips, of", [(0, 540), (1, 1), (5, 5), (6, 5), (1, 0), (0.5, 540), (1.0, 540)])
def test_a_tolerance_below_one_sample_or_of_every_sample_is_refused(flips, of):
    with pytest.raises(ToleranceTooFine):
        Tolerance(flips, of, "because")


def test_a_rate_is_turned_into_whole_samples_and_refused_below_one():
    assert Tolerance.from_rate(0.01, 540, "1%").flips == 5
    assert Tolerance.from_rate(0.02, 50, "2%").flips == 1  # exactly one sample, not rounded away
    with pytest.raises(ToleranceTooFine, match="0.54 samples, finer than one"):
        Tolerance.from_rate(0.001, 540, "0.1 points of 540 images")
    with pytest.raises(ToleranceTooFine, match="say why"):
        Tolerance(2, 540, " ")


def test_checks_count_samples_and_say_why():
    tol = Tolerance(2, 10, "noise of one image")
    ref = np.arange(10) % 3
    labels = ref.copy()
    tol.check_agreement(np.where(np.arange(10) < 2, 9, ref), ref)  # 2 differ: allowed
    with pytest.raises(AssertionError, match=r"3 of 10 predictions differ.*noise of one image"):
        tol.check_agreement(np.where(np.arange(10) < 3, 9, ref), ref)
    tol.check_drop(np.where(np.arange(10) < 2, 9, ref), ref, labels)
    with pytest.raises(AssertionError, match="3 of 10 images fewer right"):
        tol.check_drop(np.where(np.arange(10) < 3, 9, ref), ref, labels)
    tol.check_agreement_rate(0.8)  # 8 of 10, computed elsewhere
    with pytest.raises(AssertionError, match="agreement"):
        tol.check_agreement_rate(0.7)
    tol.check_drop_points(20.0)
    tol.check_gap_points(-20.0)
    with pytest.raises(AssertionError, match="top-1 drop"):
        tol.check_drop_points(30.0)
    with pytest.raises(AssertionError, match="stated for 10 samples"):
        tol.check_agreement(ref[:5], ref[:5])


# Names that hold an accuracy measured on a set of images: a float literal compared with one of
# them is a tolerance stated as a rate, which is what tests/tolerance.py exists to replace.
_ACCURACY_WORDS = ("agreement", "drop", "top1", "acc", "right", "argmax")


def _accuracy_comparisons(tree: ast.AST) -> list[ast.Compare]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        literal = any(isinstance(s, ast.Constant) and isinstance(s.value, float) and not s.value.is_integer() for s in sides)
        text = " ".join(ast.unparse(s) for s in sides if not isinstance(s, ast.Constant)).lower()
        if literal and any(w in text for w in _ACCURACY_WORDS) and "cos" not in text:
            found.append(node)
    return found


def test_no_accuracy_bound_in_the_suite_is_a_bare_rate():
    """Every agreement/drop/top-1 bound goes through Tolerance (in whole samples, with a reason),
    so none can ask for less than one image again. Floors on a trained model's own accuracy that sit
    far above chance and far below what it reaches carry `# floor:` with their reason instead."""
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.name in ("tolerance.py", "test_tolerance.py"):
            continue
        source = path.read_text()
        lines = source.splitlines()
        for node in _accuracy_comparisons(ast.parse(source)):
            if "# floor:" not in lines[node.lineno - 1]:
                offenders.append(f"{path.relative_to(TESTS)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, "state these through tests/tolerance.py:\n" + "\n".join(offenders)
