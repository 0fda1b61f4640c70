"""The benchmark's verdict, warnings and files: JSON (every sample), Markdown, PNG plots."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import TYPE_CHECKING

from rescompile._io import atomic_path, write_bytes_atomic, write_json_atomic
from rescompile.bench.env import describe_cpu_flags
from rescompile.bench.peers import CPU_INT8, TITLES

if TYPE_CHECKING:
    from rescompile.bench.run import BenchReport


def _points(report: BenchReport, key: str) -> str:
    a, r = report.accuracy_of(key), report.accuracy_of(report.reference)
    if a is None or r is None or a.top1 is None or r.top1 is None:
        return "top-1 not measured"
    return f"{100 * (a.top1 - r.top1):+.1f} points top-1"


def _points_vs(report: BenchReport, key: str, other: str) -> str:
    a, b, r = report.accuracy_of(key), report.accuracy_of(other), report.accuracy_of(report.reference)
    if a is None or b is None or r is None or None in (a.top1, b.top1, r.top1):
        return "top-1 not measured"
    return f"{100 * (a.top1 - r.top1):+.1f} vs {100 * (b.top1 - r.top1):+.1f} points top-1"


def verdict_and_warnings(report: BenchReport) -> tuple[str, list[str]]:
    warnings: list[str] = []
    measured = [m for m in report.measurements if m.stats is not None]
    if not measured:
        return "nothing could be measured", ["every measurement was skipped"]
    batch = min(m.batch for m in measured)
    ref = report.backend(report.reference)
    at = {m.key: m for m in measured if m.batch == batch}
    compute = [report.backend(k) for k in at if report.backend(k).mode == "compute" and k != ref.key and not report.backend(k).comparison]
    int8 = [b for b in compute if b.precision == "int8"]
    pool = int8 or compute
    if not pool or ref.key not in at:
        return f"only {ref.name} was measured", warnings
    best = min(pool, key=lambda b: at[b.key].stats.p50)
    speed = at[best.key].speedup or 0.0
    word = "faster" if speed >= 1 else "slower"
    ratio = speed if speed >= 1 else 1 / speed
    verdict = f"{best.name} is {ratio:.1f}x {word} than {ref.name} at batch {batch} with {_points(report, best.key)}"
    own = [k for k in CPU_INT8 if k in at and not report.backend(k).comparison]
    peers = [k for k in TITLES if k in at and report.backend(k).comparison]
    if own and peers:
        mine, peer = min(own, key=lambda k: at[k].stats.p50), min(peers, key=lambda k: at[k].stats.p50)
        r = at[peer].stats.p50 / at[mine].stats.p50
        title = TITLES[peer]
        versus = f"the fastest peer, {title}" if len(peers) > 1 else title
        name = report.backend(mine).name
        verdict += (f"; rescompile's fastest CPU INT8 ({name}) is {r if r >= 1 else 1 / r:.2f}x {'faster' if r >= 1 else 'slower'} "
                    f"than {versus} ({_points_vs(report, mine, peer)})")
        if "input" in report.environment:
            verdict += ", both from uint8 pixels"
        if r < 1:
            warnings.append(f"rescompile's fastest CPU INT8 ({name}) is slower than {title} at batch {batch} "
                            f"({at[mine].stats.p50:.2f} vs {at[peer].stats.p50:.2f} ms p50)")
    for m in measured:
        b = report.backend(m.key)
        if b.precision != "int8" or b.mode != "compute":
            continue
        for other_key, label in (("trt-fp16", "TensorRT FP16"), ("ort-fp32", "ONNX Runtime FP32"), (ref.key, ref.name)):
            o = report.get(other_key, m.batch)
            if o is None or o.stats is None or other_key == m.key:
                continue
            if b.device != report.backend(other_key).device and other_key != ref.key:
                continue
            if m.stats.p50 >= o.stats.p50:
                warnings.append(
                    f"{b.name} is not faster than {label} at batch {m.batch} ({m.stats.p50:.2f} vs {o.stats.p50:.2f} ms p50)"
                )
    return verdict, warnings


def markdown(report: BenchReport) -> str:
    env = report.environment
    gpu = env.get("gpu") or {}
    lines = [
        f"# rescompile bench: {report.model}",
        "",
        f"{_dt.date.today().isoformat()} · CPU: {env['cpu']} ({env['cpu_cores']} cores, {env['threads'] or 'all'} threads; "
        f"{describe_cpu_flags(env)})"
        + (f" · GPU: {gpu.get('name')} ({gpu.get('sm')}, driver {gpu.get('driver')}, CUDA {gpu.get('cuda')})" if gpu else " · no GPU")
        + (f" · TensorRT {env['tensorrt']}" if env.get("tensorrt") else ""),
        *[f"\nPeer: {peer}" for peer in env.get("peers") or []],
        *([f"\nInput: {env['input']}"] if env.get("input") else []),
        "",
        f"**{report.verdict}**",
        "",
        "| backend | precision | device | mode | batch | p50 ms | p90 ms | p99 ms | mean ms | std ms | images/s | vs PyTorch FP32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in report.measurements:
        b = report.backend(m.key)
        if m.stats is None:
            lines.append(f"| {b.name} | {b.precision} | {b.device} | {b.mode} | {m.batch} | skipped: {m.skipped} |||||||")
            continue
        s = m.stats
        lines.append(
            f"| {b.name} | {b.precision} | {b.device} | {b.mode} | {m.batch} | {s.p50:.3f} | {s.p90:.3f} | {s.p99:.3f} | "
            f"{s.mean:.3f} | {s.std:.3f} | {s.throughput:.1f} | {m.speedup:.2f}x |"
        )
    if report.accuracy:
        lines += ["", f"Accuracy on {report.accuracy[0].images} labelled images:", "",
                  "| backend | top-1 | agreement with FP32 | logit cosine |", "|---|---|---|---|"]
        for a in report.accuracy:
            top1 = "-" if a.top1 is None else f"{a.top1:.2%}"
            lines.append(f"| {report.backend(a.key).name} | {top1} | {a.agreement:.2%} | {a.cosine:.5f} |")
    builds = [b for b in report.backends if b.build_seconds is not None]
    if builds:
        lines += ["", "Build time (not in latency): " + ", ".join(f"{b.name} {b.build_seconds:.1f} s" for b in builds)]
    if report.warnings:
        lines += ["", *[f"- warning: {w}" for w in report.warnings]]
    lines += ["", "Warmup by time budget, never timed; backends take turns in alternating rounds and their samples "
              "are pooled; every sample kept in report.json; ratios are the reference's p50 over each backend's p50 "
              "at the same batch."]
    return "\n".join(lines) + "\n"


def latency_figure(report: BenchReport):
    """Latency p50 against batch size, one line per backend (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for b in report.backends:
        pts = sorted((m.batch, m.stats.p50) for m in report.measurements if m.key == b.key and m.stats is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=b.name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    batches = sorted({m.batch for m in report.measurements if m.stats is not None})
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.minorticks_off()
    ax.set_xlabel("batch size")
    ax.set_ylabel("latency p50 (ms)")
    ax.set_title(f"{report.model}: latency per batch")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def speedup_figure(report: BenchReport):
    """Speed-up over the reference at each batch size, one bar group per batch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = sorted({m.batch for m in report.measurements if m.stats is not None})
    keys = [b.key for b in report.backends]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.8 / max(len(keys), 1)
    for i, key in enumerate(keys):
        vals = []
        for bt in batches:
            m = report.get(key, bt)
            vals.append(m.speedup if m is not None and m.speedup is not None else 0.0)
        ax.bar([j + i * width for j in range(len(batches))], vals, width, label=report.backend(key).name)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + width * (len(keys) - 1) / 2 for j in range(len(batches))], [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel(f"speed-up vs {report.backend(report.reference).name} (x)")
    ax.set_title(f"{report.model}: speed-up (p50)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_png(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def write_outputs(report: BenchReport, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "json": write_json_atomic(out / "report.json", report.to_dict()),
        "markdown": write_bytes_atomic(out / "report.md", markdown(report).encode()),
    }
    try:
        files["latency_png"] = save_png(latency_figure(report), out / "latency.png")
        files["speedup_png"] = save_png(speedup_figure(report), out / "speedup.png")
    except ImportError:
        report.warnings.append("matplotlib is not installed: no plots (pip install 'rescompile[plot]')")
    json.dumps(report.to_dict(keep_samples=False))  # fail loudly here, not in a caller, if anything is not JSON
    return files
