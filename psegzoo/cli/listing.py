"""``psegzoo list`` and ``psegzoo info``: the manifest as tables (never imports torch)."""
from __future__ import annotations

import json
from typing import Any

import click

import psegzoo

from .common import console, escape, fmt, handle_errors, index_option, is_cached, manifest_index

SORT_KEYS = ("miou", "fps", "mem", "name")

def sorted_entries(entries: list[psegzoo.Entry], key: str) -> list[psegzoo.Entry]:
    lowest = float("-inf")
    if key == "miou":
        return sorted(entries, key=lambda e: (e.miou if e.miou is not None else lowest), reverse=True)
    if key == "fps":
        return sorted(entries, key=lambda e: (e.fps if e.fps is not None else lowest), reverse=True)
    if key == "mem":
        return sorted(entries, key=lambda e: (e.mem_gb is None, e.mem_gb or 0.0))
    return sorted(entries, key=lambda e: e.name)


# --------------------------------------------------------------------------------------------


@click.command("list")
@click.argument("pattern", required=False)
@click.option("--dataset", help="Dataset id or common spelling (ade20k, ADE, voc, pascal_voc, cityscapes, ...).")
@click.option("--method", help="PSPNet, PSANet, DeepLabV3 or UPerNet (case-insensitive).")
@click.option("--backbone", help="Backbone as printed in the tables, e.g. R-101-D8 (wildcards allowed).")
@click.option("--sort", "sort_key", type=click.Choice(SORT_KEYS), default=None, help="Sort order (default: manifest order).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of the manifest's model objects.")
@index_option
@handle_errors
def list_command(
    pattern: str | None, dataset: str | None, method: str | None, backbone: str | None, sort_key: str | None, as_json: bool
) -> None:
    """List checkpoints; PATTERN is a shell-style wildcard on names ('*r101*')."""
    entries = psegzoo.list_models(pattern, dataset=dataset, method=method, backbone=backbone, index=manifest_index())
    if sort_key:
        entries = sorted_entries(entries, sort_key)
    if as_json:
        click.echo(json.dumps([e.to_json() for e in entries], indent=1))
        return
    from rich.table import Table

    table = Table(title=f"{len(entries)} checkpoints", title_justify="left", header_style="bold")
    for column, justify in (
        ("name", "left"),
        ("method", "left"),
        ("backbone", "left"),
        ("crop", "left"),
        ("schedule", "right"),
        ("mIoU", "right"),
        ("ms+flip", "right"),
        ("fps", "right"),
        ("mem GB", "right"),
        ("cached", "center"),
    ):
        table.add_column(column, justify=justify, no_wrap=column in ("name", "crop"))
    for e in entries:
        table.add_row(
            escape(e.name),
            e.method,
            escape(e.backbone),
            f"{e.crop_size[0]}x{e.crop_size[1]}",
            escape(str(e.schedule)),
            fmt(e.miou, 2),
            fmt(e.miou_ms_flip, 2),
            fmt(e.fps, 2),
            fmt(e.mem_gb),
            "yes" if is_cached(e) else "",
        )
    out = console()
    if not out.is_terminal:
        out.width = max(out.width, 200)
    out.print(table)


def _info_object(resolution: psegzoo.Resolution) -> dict[str, Any]:
    entry = resolution.entry
    obj = entry.to_json()
    dataset = psegzoo.get_dataset(entry.dataset, index=manifest_index())
    obj["query"] = resolution.query
    obj["is_alias"] = resolution.is_alias
    obj["alternatives"] = [a.name for a in resolution.alternatives]
    obj["classes"] = list(dataset.classes)
    obj["cached"] = is_cached(entry)
    if entry.weights is not None:
        obj["cache_path"] = str(psegzoo.checkpoint_path(entry))
        record = psegzoo.read_record(entry) if obj["cached"] else None
        obj["sha256"] = record.sha256 if record is not None else None
    return obj


@click.command("info")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (its 'name' is the canonical name).")
@index_option
@handle_errors
def info_command(name: str, as_json: bool) -> None:
    """Show every field of one checkpoint (canonical name, published file name or short alias)."""
    resolution = psegzoo.resolve(name, index=manifest_index())
    obj = _info_object(resolution)
    if as_json:
        click.echo(json.dumps(obj, indent=1))
        return
    e = resolution.entry
    out = console()
    if resolution.is_alias:
        out.print(f"[dim]{escape(name)} resolved to the best single-scale mIoU among {1 + len(resolution.alternatives)} matches[/]")
    out.print(f"[bold]{escape(e.name)}[/]")
    arch, test = e.architecture, e.test
    bb, head = arch.backbone, arch.decode_head
    rows = [
        ("method", e.method),
        ("backbone", e.backbone),
        ("dataset", f"{e.dataset} ({arch.num_classes} classes)"),
        ("source", e.source),
        ("config", e.config or "-"),
        ("crop size", f"{e.crop_size[0]}x{e.crop_size[1]}"),
        ("schedule", str(e.schedule)),
        ("mIoU", fmt(e.miou, 2)),
        ("mIoU (ms+flip)", fmt(e.miou_ms_flip, 2)),
        ("memory (GB)", fmt(e.mem_gb)),
        ("fps", fmt(e.fps, 2)),
        ("fp16 training", "yes" if e.fp16 else "no"),
        ("weights", e.weights.url if e.weights else "none published yet"),
        ("sha256 prefix", (e.weights.sha256_prefix or "none published") if e.weights else "-"),
        ("sha256 (cached)", obj.get("sha256") or "-"),
        ("cached", obj.get("cache_path") if obj["cached"] else "no"),
        (
            "backbone net",
            f"{bb.type} depth {bb.depth}, strides {list(bb.strides)}, dilations {list(bb.dilations)}"
            + (f", multi-grid {list(bb.multi_grid)}" if bb.multi_grid else "")
            + (", contract dilation" if bb.contract_dilation else ""),
        ),
        ("decode head", _head_text(head)),
        ("auxiliary head", _head_text(arch.auxiliary_head) + " (training only, not built)" if arch.auxiliary_head else "-"),
        ("align corners", str(arch.align_corners).lower()),
        (
            "test",
            f"{test.mode}, scale {list(test.scale)}"
            + (f", crop {list(test.crop_size)}, stride {list(test.stride)}" if test.mode == "slide" else "")
            + (", logits resized straight to the original size" if test.resize_logits == "direct" else ""),
        ),
        ("mean / std", f"{list(test.mean)} / {list(test.std)}"),
    ]
    for r in e.results:
        rows.append((f"result on {r.dataset}", f"mIoU {fmt(r.miou, 2)}, ms+flip {fmt(r.miou_ms_flip, 2)}"))
    if resolution.alternatives:
        rows.append(("alternatives", ", ".join(a.name for a in resolution.alternatives)))
    rows.append(("classes", ", ".join(obj["classes"])))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        out.print(f"  [cyan]{key.ljust(width)}[/]  {escape(value)}")


def _head_text(head: Any) -> str:
    parts = [f"{head.type}, {head.channels} channels"]
    if head.pool_scales:
        parts.append(f"pool scales {list(head.pool_scales)}")
    if head.dilations:
        parts.append(f"dilations {list(head.dilations)}")
    if head.mask_size:
        parts.append(
            f"mask {head.mask_size[0]}x{head.mask_size[1]}, {head.psa_type}, shrink {head.shrink_factor}"
            + (", compact" if head.compact else "")
        )
    if head.num_convs is not None:
        parts.append(f"{head.num_convs} conv(s)")
    parts.append(f"in {head.in_channels} (index {head.in_index})")
    return ", ".join(parts)
