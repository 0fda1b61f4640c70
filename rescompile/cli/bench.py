"""rescompile bench"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from rescompile.cli import app, options
from rescompile.cli._common import StepProgress, guarded, out, print_json
from rescompile.cli.options import ACCURACY, BENCHMARK, TIMING, Json
from rescompile.config import BenchConfig

B = BenchConfig()


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers for {what}, got {text!r}") from None
    if not values or min(values) < 1:
        raise typer.BadParameter(f"{what} must be positive integers, got {text!r}")
    return values


def print_report(report) -> None:
    table = Table(title=f"{report.model}: latency (ms) and speed-up vs {report.backend(report.reference).name}")
    for col in ("backend", "batch", "p50", "p90", "p99", "std", "images/s", "speed-up"):
        table.add_column(col, justify="right" if col != "backend" else "left")
    for m in report.measurements:
        b = report.backend(m.key)
        if m.stats is None:
            table.add_row(b.name, str(m.batch), f"skipped: {m.skipped}", "", "", "", "", "")
            continue
        s = m.stats
        table.add_row(b.name, str(m.batch), f"{s.p50:.3f}", f"{s.p90:.3f}", f"{s.p99:.3f}", f"{s.std:.3f}", f"{s.throughput:.0f}",
                      f"{m.speedup:.2f}x")
    out.print(table)
    if report.accuracy:
        acc = Table(title=f"accuracy on {report.accuracy[0].images} labelled images")
        for col in ("backend", "top-1", "agreement with FP32", "logit cosine"):
            acc.add_column(col, justify="right" if col != "backend" else "left")
        for a in report.accuracy:
            acc.add_row(report.backend(a.key).name, "-" if a.top1 is None else f"{a.top1:.2%}", f"{a.agreement:.2%}", f"{a.cosine:.5f}")
        out.print(acc)
    for b in report.backends:
        if b.build_seconds is not None:
            out.print(f"build time (not in latency): {b.name} {b.build_seconds:.1f} s")
    out.print(f"[bold]{escape(report.verdict)}[/bold]")
    for w in report.warnings:
        out.print(f"[yellow]warning: {escape(w)}[/yellow]")
    env = report.environment
    from rescompile.bench.env import describe_cpu_flags

    out.print(f"machine: {env['cpu']} ({describe_cpu_flags(env)}), {env['cpu_cores']} cores, "
              f"threads {env['threads'] or 'all'}"
              + (f", GPU {env['gpu']['name']}" if env.get("gpu") else ", no GPU"))
    for peer in env.get("peers") or []:
        out.print(f"peer: {escape(peer)}")
    if env.get("input"):
        out.print(f"input: {escape(env['input'])}")
    out.print(f"report: {report.files.get('markdown')}  plots: {report.files.get('latency_png')}, {report.files.get('speedup_png')}")


@app.command(
    epilog=(
        "Examples:\n\n"
        "  rescompile bench                                              (the default build's bundle)\n\n"
        "  rescompile bench out/resnet18 --batch-sizes 1,8,32 --threads 2\n\n"
        "  rescompile bench out/resnet18 --channels-last --compile --json > bench.json\n\n"
        "  rescompile bench out/resnet18 --from-pixels --batch-sizes 1   (as a camera app sees it)"
    )
)
@guarded
def bench(
    bundle: Annotated[Path | None, typer.Argument(metavar="BUNDLE", help="Bundle folder to measure.", show_default="the default build's bundle")] = None,
    batch_sizes: Annotated[str, typer.Option(
        metavar="<list>", help="Comma-separated batch sizes.", rich_help_panel=BENCHMARK,
    )] = ",".join(map(str, B.batch_sizes)),
    backends: Annotated[str | None, typer.Option(
        metavar="<list>", help="Only these backends, comma-separated: torch-fp32, ort-int8, trt-int8 and so on.",
        show_default="every one that runs here", rich_help_panel=BENCHMARK,
    )] = None,
    threads: Annotated[int | None, options.threads(BENCHMARK)] = None,
    device: Annotated[str, options.device(BENCHMARK)] = B.device,
    from_pixels: Annotated[bool, typer.Option(
        "--from-pixels", help="Time every backend from uint8 pixels, as an app holding camera frames sees it.", rich_help_panel=BENCHMARK,
    )] = False,
    peers: Annotated[str, typer.Option(
        metavar="<list>", help="Other tools' INT8 to time beside rescompile's (ort, nncf, or none); missing ones are skipped.",
        rich_help_panel=BENCHMARK,
    )] = ",".join(B.peers),
    channels_last: Annotated[bool, typer.Option(help="Also time PyTorch eager in channels_last.", rich_help_panel=BENCHMARK)] = False,
    compile: Annotated[bool, typer.Option(
        "--compile", help="Also time torch.compile; its compile time is reported apart.", rich_help_panel=BENCHMARK,
    )] = False,
    warmup_s: Annotated[float, typer.Option(
        min=0.0, metavar="<s>", help="Untimed warmup per measurement, in seconds.", rich_help_panel=TIMING,
    )] = B.warmup_s,
    min_runs: Annotated[int, typer.Option(min=1, metavar="<n>", help="Timed runs per measurement, at least.", rich_help_panel=TIMING)] = B.min_runs,
    max_s: Annotated[float, typer.Option(
        min=0.0, metavar="<s>", help="Stop sampling after this many seconds once --min-runs are in.", rich_help_panel=TIMING,
    )] = B.max_s,
    rounds: Annotated[int, typer.Option(
        min=1, metavar="<n>", help="Times the backends take turns, in alternating order, samples pooled.", rich_help_panel=TIMING,
    )] = B.rounds,
    eval_data: Annotated[str | None, options.eval_data(ACCURACY)] = None,
    max_eval_images: Annotated[int, typer.Option(
        min=1, metavar="<n>", help="At most this many images for accuracy.", rich_help_panel=ACCURACY,
    )] = B.max_eval_images,
    output_dir: Annotated[Path | None, options.output_dir("<bundle>/bench")] = None,
    json_out: Json = False,
) -> None:
    """Latency and accuracy of every backend a bundle can run here, against FP32 PyTorch."""
    from rescompile.bench import run_bench
    from rescompile.config import DataConfig

    cfg = BenchConfig(
        bundle=bundle, batch_sizes=parse_ints(batch_sizes, "--batch-sizes"), threads=threads, device=device,
        backends=tuple(x.strip() for x in backends.split(",") if x.strip()) if backends else None, channels_last=channels_last,
        compile=compile, eval_data=DataConfig(eval_data) if eval_data else None, max_eval_images=max_eval_images,
        warmup_s=warmup_s, min_runs=min_runs, max_s=max_s, rounds=rounds, output_dir=output_dir,
        peers=tuple(p.strip() for p in peers.split(",") if p.strip() and p.strip() != "none"), from_pixels=from_pixels,
    )
    with StepProgress(enabled=not json_out) as progress:
        report = run_bench(cfg, on_progress=progress)
    if json_out:
        print_json({**report.to_dict(keep_samples=False), "files": {k: str(v) for k, v in report.files.items()}})
        return
    print_report(report)
