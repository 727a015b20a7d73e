"""``psegzoo bench``: time a model against a naive baseline in the same run."""
from __future__ import annotations

import json

import click

import psegzoo

from .common import console, escape, fmt_size, handle_errors, index_option, pair_option


@click.command("bench")
@click.argument("name")
@click.option("--size", default="1024x2048", show_default=True,
              help="Image size HxW; the forwards run at this size (whole) or over the model's windows on it (slide).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or mps.")
@click.option("--mode", "modes", multiple=True, type=click.Choice(["whole", "slide"]),
              help="Modes to time (default: both).")
@click.option("--repeat", type=click.IntRange(1, 100), default=1, show_default=True, help="Timed runs per mode.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Checkpoint to use (default: cached, else initial weights).")
@click.option("--no-baseline", is_flag=True, help="Skip the naive baseline (one window at a time, no fast paths, no BN folding).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@index_option
@handle_errors
def bench_command(name, size, device, modes, repeat, weights, no_baseline, as_json) -> None:
    """Time load and prediction of one model against a naive baseline in the same run."""
    hw = pair_option(size, "--size") or (1024, 2048)
    report = psegzoo.benchmark(name, size=hw, device=device, modes=list(modes) or ["whole", "slide"], repeat=repeat,
                               weights=weights, baseline=not no_baseline,
                               log=None if as_json else lambda msg: console(stderr=True).print(escape(msg)))
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    from rich.table import Table

    table = Table(title=f"{report['model']} on {report['device']}, image {hw[0]}x{hw[1]}", title_justify="left")
    for column in ("mode", "variant", "s / image", "images / s", "peak memory", "vs baseline", "labels equal"):
        table.add_column(column)
    for row in report["runs"]:
        peak = ("" if row.get("peak_exact", True) else "<= ") + fmt_size(row.get("peak_bytes"))  # see benchmark()
        table.add_row(row["mode"], row["variant"], f"{row['seconds']:.3f}", f"{1 / row['seconds']:.3f}", peak,
                      f"{row['speedup']:.2f}x" if row.get("speedup") else "-",
                      "-" if row.get("labels_equal") is None else f"{row['labels_equal'] * 100:.3f}%")
    out = console()
    paths = ", ".join(k for k, v in report["fast_paths"].items() if v) or "none"
    out.print(f"load: {report['load_seconds']:.2f} s ({escape(report['weights'])}); fast paths: {paths}")
    forwards = {row["mode"]: "x".join(str(v) for v in row["forward_size"]) for row in report["runs"]}
    out.print("; ".join(f"{mode}: {'forwards' if mode == 'whole' else 'windows'} of {size}"
                        for mode, size in forwards.items()))
    out.print(table)
