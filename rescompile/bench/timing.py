"""Honest timing: warmup by time budget (never timed), every sample kept, percentiles from them.

The function timed must block until its work is done (GPU backends synchronize inside it, or
pass ``sync``), and its inputs must already be where it runs: what is timed is inference,
not data movement, unless the caller times an end-to-end function on purpose.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between closest ranks."""
    if not samples:
        raise ValueError("no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    data = sorted(samples)
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


@dataclass
class TimingStats:
    """Latency samples of one (backend, batch) in milliseconds, and what follows from them."""

    batch: int
    samples_ms: list[float] = field(repr=False)
    warmup_runs: int = 0
    warmup_s: float = 0.0

    @property
    def runs(self) -> int:
        return len(self.samples_ms)

    @property
    def p50(self) -> float:
        return percentile(self.samples_ms, 50)

    @property
    def p90(self) -> float:
        return percentile(self.samples_ms, 90)

    @property
    def p99(self) -> float:
        return percentile(self.samples_ms, 99)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples_ms)

    @property
    def std(self) -> float:
        return statistics.stdev(self.samples_ms) if self.runs > 1 else 0.0

    @property
    def throughput(self) -> float:
        """Images per second at the median latency."""
        return 1000.0 * self.batch / self.p50

    def to_dict(self, keep_samples: bool = True) -> dict[str, Any]:
        d = {
            "batch": self.batch, "runs": self.runs, "warmup_runs": self.warmup_runs, "warmup_s": round(self.warmup_s, 3),
            "p50_ms": self.p50, "p90_ms": self.p90, "p99_ms": self.p99, "mean_ms": self.mean, "std_ms": self.std,
            "throughput_ips": self.throughput,
        }
        if keep_samples:
            d["samples_ms"] = self.samples_ms
        return d


@dataclass(frozen=True)
class TimingBudget:
    warmup_s: float = 1.0  # run untimed for at least this long (caches, JIT, clocks, allocator)
    min_warmup_runs: int = 3
    min_runs: int = 20
    max_runs: int = 1000
    max_s: float = 5.0  # stop sampling after this long once min_runs are in


def measure(
    fn: Callable[[], Any], batch: int, budget: TimingBudget = TimingBudget(), *,
    sync: Callable[[], None] | None = None, clock: Callable[[], float] = time.perf_counter,
) -> TimingStats:
    """Time ``fn`` (one inference of ``batch`` images): warmup untimed, then sample each call."""
    if budget.min_runs < 1 or budget.max_runs < budget.min_runs:
        raise ValueError("need 1 <= min_runs <= max_runs")
    sync = sync or (lambda: None)
    start = clock()
    warm = 0
    while warm < budget.min_warmup_runs or clock() - start < budget.warmup_s:
        fn()
        sync()
        warm += 1
    warm_s = clock() - start
    samples: list[float] = []
    begin = clock()
    while len(samples) < budget.max_runs and (len(samples) < budget.min_runs or clock() - begin < budget.max_s):
        t0 = clock()
        fn()
        sync()
        samples.append((clock() - t0) * 1000.0)
    return TimingStats(batch, samples, warm, warm_s)
