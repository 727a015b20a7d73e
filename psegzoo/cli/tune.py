"""``psegzoo tune``: measure which CPU fast paths pay on this machine and record the choice."""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any

import click

import psegzoo

from .common import StatusLine, console, escape, handle_errors


def _table(measured: dict[str, dict[str, float]], chosen: Any) -> Any:
    from rich.table import Table

    table = Table(title="CPU fast paths: plain against fast (shortest run)", title_justify="left")
    for column in ("path", "plain", "fast", "speed-up", "chosen"):
        table.add_column(column, justify="left" if column in ("path", "chosen") else "right")
    for name, times in measured.items():
        table.add_row(name, f"{times['plain'] * 1000:.1f} ms", f"{times['fast'] * 1000:.1f} ms",
                      f"{times['plain'] / times['fast']:.2f}x", "yes" if getattr(chosen, name) else "no")
    return table


def _verdict(result: Any) -> tuple[str, int]:
    """What became of the measurement, and the exit code (1: busy and not recorded)."""
    load = f"load average {result.load[0]:.2f} on {result.cpus} CPU(s)"
    if result.recorded and result.busy:
        return f"recorded in {result.record} although the machine was busy ({load}; --force)", 0
    if result.recorded:
        return f"recorded in {result.record} ({load}); predict, eval and bench now use it", 0
    return (f"not recorded: the machine was too busy to trust these timings ({load}, above half the CPUs); "
            "run 'psegzoo tune' again when it is quiet, or add --force to record them anyway"), 1


def _show() -> None:
    """``--show``: what ``load()`` would install now, measuring nothing."""
    choice = psegzoo.cpu_fast_paths()
    console().print(f"fast paths on this CPU: {escape(choice.describe())}", soft_wrap=True)
    if choice.measured:
        console().print(_table(choice.measured, choice.paths))


@click.command("tune")
@click.option("--force", is_flag=True, help="Record the result even when the machine is busy.")
@click.option("--repeat", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Timed runs of each path (the shortest counts).")
@click.option("--show", is_flag=True, help="Only show the fast paths in use now and where they come from.")
@click.option("--json", "as_json", is_flag=True, help="Print the measurement and the choice as JSON.")
@handle_errors
def tune_command(force: bool, repeat: int, show: bool, as_json: bool) -> None:
    """Measure which CPU fast paths pay here (a few seconds) and record the choice.

    Each path is timed against what it replaces; one is chosen when it is at least 10% faster.
    The choice is recorded in the cache root (fast_paths.json) for this CPU, PyTorch version and
    thread count; predict, eval and bench read it and never measure. Without a record they use a
    fixed default for the CPU's vector features. On a busy machine (load average above half the
    CPUs) nothing is recorded unless --force, and the exit code is 1.
    """
    if show:
        _show()
        return
    with StatusLine() as status:
        status("importing PyTorch")
        tune = psegzoo.tune
        status("measuring the CPU fast paths (a few seconds)")
        result = tune(force=force, repeats=repeat)
    message, code = _verdict(result)
    if as_json:
        click.echo(json.dumps({"key": result.key, "measured": result.measured, "chosen": asdict(result.chosen),
                               "load": list(result.load), "cpus": result.cpus, "busy": result.busy,
                               "recorded": result.recorded, "record": str(result.record)}, indent=1))
    else:
        out = console()
        out.print(_table(result.measured, result.chosen))
        out.print(f"chosen: {result.chosen} (for {escape(result.key)})", soft_wrap=True)
    console(stderr=True).print(("[yellow]warning:[/] " if code else "") + escape(message), soft_wrap=True)
    sys.exit(code)
