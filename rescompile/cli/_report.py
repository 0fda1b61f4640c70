"""Rendering the fusion report as a rich table."""

from __future__ import annotations

from rich.table import Table

from rescompile.stages.optimize.residual import FusionReport


def _mark(ok: bool) -> str:
    return "[green]yes[/green]" if ok else "[red]no[/red]"


def fusion_table(report: FusionReport, title: str) -> Table:
    table = Table(title=title)
    holds = any(b.holds for b in report.blocks)  # the column only where a branch holds more than convs and ReLUs
    for col in ("block", "kind", "skip", *(("branch holds",) if holds else ()), "Conv-BN", "Conv-ReLU", "Add-ReLU", "blocks fusion"):
        table.add_column(col)
    for b in report.blocks:
        table.add_row(
            b.name, b.kind, b.skip, *(("; ".join(b.holds) or "-",) if holds else ()), _mark(b.conv_bn_fusable),
            _mark(b.conv_relu_fusable), _mark(b.add_relu_fusable), "; ".join(b.blockers) or "-",
        )
    return table


def totals_line(report: FusionReport) -> str:
    done = ", ".join(f"{k} {v}" for k, v in report.rewrites.items() if v) or "none"
    return (
        f"residual blocks: {len(report.blocks)} ({report.fusable_blocks} fusable) | "
        f"BatchNormalization: {report.bn_before} -> {report.bn_after} | nodes: {report.nodes_before} -> {report.nodes_after} | "
        f"rewrites: {done}"
    )
