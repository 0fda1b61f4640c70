"""bench: honest latency and accuracy of a bundle's backends against FP32 PyTorch eager."""

from rescompile.bench.run import BenchReport, run_bench
from rescompile.bench.timing import TimingBudget, TimingStats, measure, percentile

__all__ = ["BenchReport", "TimingBudget", "TimingStats", "measure", "percentile", "run_bench"]
