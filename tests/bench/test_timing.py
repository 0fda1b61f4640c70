"""Timing: percentiles, warmup never timed, sample counts and budgets (with a fake clock)."""

from __future__ import annotations

import numpy as np
import pytest

from rescompile.bench.timing import TimingBudget, TimingStats, measure, percentile


@pytest.mark.parametrize("q", [0, 10, 50, 90, 99, 100])
def test_percentile_matches_numpy_linear(q):
    samples = list(np.random.default_rng(q).exponential(3.0, 101))
    assert percentile(samples, q) == pytest.approx(np.percentile(samples, q))


def test_percentile_edges():
    assert percentile([4.0], 99) == 4.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


class FakeClock:
    """Each call of the timed function advances time by the next duration."""

    def __init__(self, durations):
        self.now, self.durations, self.calls = 0.0, list(durations), 0

    def clock(self) -> float:
        return self.now

    def fn(self) -> None:
        self.now += self.durations[min(self.calls, len(self.durations) - 1)]
        self.calls += 1


def test_warmup_is_excluded_and_lasts_its_budget():
    # Slow first calls (JIT, caches): 0.5 s each for 4 calls, then 10 ms.
    fake = FakeClock([0.5] * 4 + [0.01] * 1000)
    stats = measure(fake.fn, batch=2, budget=TimingBudget(warmup_s=1.0, min_warmup_runs=3, min_runs=20, max_runs=20, max_s=60),
                    clock=fake.clock)
    assert stats.warmup_runs == 3 and stats.warmup_s == pytest.approx(1.5)  # ran until >= 1 s and >= 3 runs
    assert stats.runs == 20
    # the 4th slow call (0.5 s) was the first timed one: only one sample is slow, the rest are 10 ms
    assert sorted(stats.samples_ms)[-1] == pytest.approx(500.0) and stats.p50 == pytest.approx(10.0)
    assert stats.throughput == pytest.approx(200.0)  # 2 images / 10 ms


def test_time_budget_caps_samples_after_min_runs():
    fake = FakeClock([0.1] * 10_000)
    stats = measure(fake.fn, 1, TimingBudget(warmup_s=0.0, min_warmup_runs=1, min_runs=5, max_runs=1000, max_s=2.0), clock=fake.clock)
    assert 20 <= stats.runs <= 21  # 2 s of 0.1 s calls
    slow = FakeClock([5.0] * 100)
    stats = measure(slow.fn, 1, TimingBudget(warmup_s=0.0, min_warmup_runs=1, min_runs=5, max_runs=1000, max_s=2.0), clock=slow.clock)
    assert stats.runs == 5  # min_runs always taken, even past the time budget


def test_sync_is_called_inside_the_timed_region():
    fake, synced = FakeClock([0.001] * 100), []

    def sync():
        fake.now += 0.004  # waiting for a GPU stream
        synced.append(1)

    stats = measure(fake.fn, 1, TimingBudget(warmup_s=0, min_warmup_runs=1, min_runs=10, max_runs=10), sync=sync, clock=fake.clock)
    assert len(synced) == 11 and stats.p50 == pytest.approx(5.0)


def test_stats_summary():
    s = TimingStats(4, [1.0, 2.0, 3.0, 4.0, 100.0])
    d = s.to_dict()
    assert d["runs"] == 5 and d["p50_ms"] == 3.0 and d["mean_ms"] == pytest.approx(22.0)
    assert d["std_ms"] == pytest.approx(np.std([1, 2, 3, 4, 100], ddof=1)) and d["samples_ms"] == [1.0, 2.0, 3.0, 4.0, 100.0]
    assert "samples_ms" not in s.to_dict(keep_samples=False)


@pytest.mark.gpu
def test_cuda_timing_synchronizes():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU")
    from rescompile.bench.backends import TorchBackend
    from rescompile.models.load import load_model

    m = load_model("resnet20")
    backend = TorchBackend(m.module, m.spec.input_shape, device="cuda")
    x = np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(np.float32)
    stats = measure(backend.prepare(x), 32, TimingBudget(warmup_s=0.2, min_runs=10, max_s=1))
    assert stats.runs >= 10 and stats.p50 > 0.05  # a synchronized ResNet-20 batch of 32 is not free
