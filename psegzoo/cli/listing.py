"""``psegzoo list`` and ``psegzoo info``: the manifest as text that fits (never imports torch).

The table is laid out here rather than by rich: its one rule is exactness (a figure or a name
is shown whole or not at all) and it must draw 123 rows in a few milliseconds. Columns drop by
priority to fit the terminal; ``--wide`` or ``--columns`` choose them. In a pipe nothing is
wrapped or dropped unless ``COLUMNS`` says how wide to be.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import click

import psegzoo

from .common import fail, fmt, handle_errors, index_option, manifest_index

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
# Cells
# --------------------------------------------------------------------------------------------

_SSSEG_BACKBONE = re.compile(r"^(ResNet\d+) \(OS=(\d+)\b")
_SSSEG_SCHEDULE = re.compile(r"EPOCH:\s*\S*/(\d+)\s*$")


def schedule_text(schedule: int | str, compact: bool = True) -> str:
    """``80000`` -> ``80k``; SSSegmentation's ``LR/POLICY/BS/EPOCH: 0.01/poly/16/60`` -> ``60 ep``."""
    if not compact:
        return str(schedule)
    if isinstance(schedule, int):
        return f"{schedule // 1000}k" if schedule >= 1000 and schedule % 1000 == 0 else str(schedule)
    m = _SSSEG_SCHEDULE.search(schedule)
    return f"{m.group(1)} ep" if m else schedule


def backbone_text(backbone: str, compact: bool = True) -> str:
    """mmseg's ``R-101-D8`` as it is; SSSegmentation's ``ResNet50 (OS=8, PRE=ImageNet)`` -> ``ResNet50 OS8``."""
    m = _SSSEG_BACKBONE.match(backbone) if compact else None
    return f"{m.group(1)} OS{m.group(2)}" if m else backbone


@dataclass(frozen=True)
class Column:
    """One table column: ``priority`` 0 is kept longest when the terminal is narrow."""

    key: str
    header: str
    right: bool
    priority: int
    cell: Callable[[psegzoo.Entry, bool], str]  # (entry, compact) -> text


COLUMNS: tuple[Column, ...] = (
    Column("name", "name", False, 0, lambda e, c: e.name),
    Column("method", "method", False, 9, lambda e, c: e.method),
    Column("backbone", "backbone", False, 6, lambda e, c: backbone_text(e.backbone, c)),
    Column("crop", "crop", False, 7, lambda e, c: f"{e.crop_size[0]}x{e.crop_size[1]}"),
    Column("schedule", "schedule", True, 8, lambda e, c: schedule_text(e.schedule, c)),
    Column("miou", "mIoU", True, 1, lambda e, c: fmt(e.miou, 2)),
    Column("ms_flip", "ms+flip", True, 3, lambda e, c: fmt(e.miou_ms_flip, 2)),
    Column("fps", "fps", True, 4, lambda e, c: fmt(e.fps, 2)),
    Column("mem", "mem GB", True, 5, lambda e, c: fmt(e.mem_gb)),
    Column("cached", "cached", False, 2, lambda e, c: ""),  # filled from one look at the cache
)
_BY_KEY = {c.key: c for c in COLUMNS}
_COLUMN_ALIASES = {"ms+flip": "ms_flip", "msflip": "ms_flip", "mem_gb": "mem", "memory": "mem", "iters": "schedule"}
GAP = "  "


def parse_columns(value: str | None) -> list[Column] | None:
    """``name,miou,fps`` -> those columns in that order (case-insensitive); None when not given."""
    if value is None:
        return None
    keys = [k.strip().lower() for k in value.split(",") if k.strip()]
    keys = [_COLUMN_ALIASES.get(k, k) for k in keys]
    unknown = [k for k in keys if k not in _BY_KEY]
    if unknown or not keys:
        raise click.BadParameter(
            f"unknown column(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(c.key for c in COLUMNS)}",
            param_hint="--columns",
        )
    return [_BY_KEY[k] for k in dict.fromkeys(keys)]


def terminal_width() -> int | None:
    """How wide the table may be: ``COLUMNS``, else the terminal's width, else None (a pipe: no limit)."""
    env = os.environ.get("COLUMNS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


@dataclass(frozen=True)
class Table:
    """A laid-out table: the columns kept, those hidden to fit, and every cell whole."""

    columns: tuple[Column, ...]
    hidden: tuple[Column, ...]
    rows: tuple[tuple[str, ...], ...]
    widths: tuple[int, ...]

    def lines(self) -> list[str]:
        return [self._line(tuple(c.header for c in self.columns)), *(self._line(r) for r in self.rows)]

    def _line(self, cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(w) if col.right else cell.ljust(w)
            for col, cell, w in zip(self.columns, cells, self.widths)
        ]
        return GAP.join(parts).rstrip()


def layout(entries: Sequence[psegzoo.Entry], width: int | None, *, chosen: Sequence[Column] | None = None,
           wide: bool = False, cached: Callable[[], set[str]] = set) -> Table:
    """Lay out ``entries`` within ``width`` (None: no limit) by dropping low-priority columns.

    Cells are never cut: when even the name and mIoU do not fit, the lines are longer than
    ``width`` and the terminal wraps them. ``cached()`` gives the cached checkpoint file names and
    is called only when the cached column is shown.
    """
    compact = not wide
    columns = list(chosen) if chosen else list(COLUMNS)
    cached_files = cached() if any(c.key == "cached" for c in columns) else set()

    def cell(col: Column, e: psegzoo.Entry) -> str:
        if col.key == "cached":
            return "yes" if e.weights is not None and e.weights.file in cached_files else ""
        return col.cell(e, compact)

    table = {c.key: [cell(c, e) for e in entries] for c in columns}
    widths = {c.key: max([len(c.header), *map(len, table[c.key])]) for c in columns}
    hidden: list[Column] = []
    if width is not None and not wide and not chosen:
        by_priority = sorted(columns, key=lambda c: c.priority, reverse=True)
        while len(columns) > 2 and sum(widths[c.key] for c in columns) + len(GAP) * (len(columns) - 1) > width:
            drop = by_priority.pop(0)
            columns.remove(drop)
            hidden.append(drop)
    rows = tuple(tuple(table[c.key][i] for c in columns) for i in range(len(entries)))
    return Table(tuple(columns), tuple(hidden), rows, tuple(widths[c.key] for c in columns))


def _cached_files() -> set[str]:
    """File names in the cache; a cache that cannot be read leaves the column empty, not the listing."""
    try:
        return {c.file for c in psegzoo.cached()}
    except (psegzoo.PsegzooError, OSError) as exc:
        text = exc.cli_message() if isinstance(exc, psegzoo.PsegzooError) else str(exc)
        click.echo(f"warning: the cache cannot be read, so the cached column is empty ({text})", err=True)
        return set()


# --------------------------------------------------------------------------------------------
# list
# --------------------------------------------------------------------------------------------


def nothing_matched(pattern: str | None, **filters: str | None) -> str:
    """Why ``list`` shows nothing, and names that look like the pattern."""
    asked = [f"{pattern!r}"] if pattern else []
    asked += [f"--{key} {value}" for key, value in filters.items() if value]
    manifest = psegzoo.load_manifest(manifest_index())
    close = manifest.close_names(pattern, aliases=False) if pattern else []  # names a pattern matches
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return (f"no checkpoint matches {' with '.join(asked)}.{hint} 'psegzoo list' with no pattern lists all "
            f"{len(manifest.models)}; a pattern is a shell-style wildcard on names ('*r101*cityscapes*')")


@click.command("list")
@click.argument("pattern", required=False)
@click.option("--dataset", help="Dataset id or common spelling (ade20k, ADE, voc, pascal_voc, cityscapes, ...).")
@click.option("--method", help="PSPNet, PSANet, DeepLabV3 or UPerNet (case-insensitive).")
@click.option("--backbone", help="Backbone as published, e.g. R-101-D8 (wildcards allowed, case-insensitive).")
@click.option("--sort", "sort_key", type=click.Choice(SORT_KEYS), default=None, help="Sort order (default: manifest order).")
@click.option("--wide", is_flag=True, help="Every column, figures as published, whatever the terminal width.")
@click.option("--columns", "columns_text", metavar="LIST",
              help=f"Columns to show, in order: {','.join(c.key for c in COLUMNS)}.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of the manifest's model objects.")
@index_option
@handle_errors
def list_command(pattern: str | None, dataset: str | None, method: str | None, backbone: str | None,
                 sort_key: str | None, wide: bool, columns_text: str | None, as_json: bool) -> None:
    """List checkpoints; PATTERN is a shell-style wildcard on names ('*r101*'), case-insensitive.

    Columns that do not fit the terminal are left out, least useful first (method, schedule,
    crop, backbone, ...); numbers and names are never cut. --wide or --columns choose.
    """
    chosen = parse_columns(columns_text)
    try:
        entries = psegzoo.list_models(pattern, dataset=dataset, method=method, backbone=backbone,
                                      index=manifest_index())
    except psegzoo.UnknownModelError as exc:  # an unknown --dataset or --method: a misuse of an option
        fail(exc.cli_message(), code=2)
    if not entries:
        fail(nothing_matched(pattern, dataset=dataset, method=method, backbone=backbone))
    if sort_key:
        entries = sorted_entries(entries, sort_key)
    if as_json:
        click.echo(json.dumps([e.to_json() for e in entries], indent=1, allow_nan=False))
        return
    width = terminal_width()
    table = layout(entries, width, chosen=chosen, wide=wide, cached=_cached_files)
    title = f"{len(entries)} checkpoint{'s' if len(entries) != 1 else ''}"
    if table.hidden:
        hint = f" (--wide adds {', '.join(c.key for c in table.hidden)})"
        title += hint if width is None or len(title + hint) <= width else f" (--wide adds {len(table.hidden)} columns)"
    header, *rows = table.lines()
    out = [title, click.style(header, bold=True), *rows]
    click.echo("\n".join(out))


# --------------------------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------------------------


def _cached_state(entry: psegzoo.Entry) -> tuple[str | None, str | None]:
    """(cached checkpoint path, its verified SHA-256 from the cache record) or Nones."""
    if entry.weights is None:
        return None, None
    path = psegzoo.checkpoint_path(entry)
    if not path.is_file():
        return None, None
    record = psegzoo.read_record(entry)
    return str(path), record.sha256 if record is not None else None


def _info_object(resolution: psegzoo.Resolution) -> dict[str, Any]:
    entry = resolution.entry
    obj = entry.to_json()
    dataset = psegzoo.get_dataset(entry.dataset, index=manifest_index())
    obj["query"] = resolution.query
    obj["is_alias"] = resolution.is_alias
    obj["alternatives"] = [a.name for a in resolution.alternatives]
    obj["classes"] = list(dataset.classes)
    path, sha256 = _cached_state(entry)
    obj["cached"] = path is not None
    if entry.weights is not None:
        obj["cache_path"] = str(psegzoo.checkpoint_path(entry))
    obj["cached_sha256"] = sha256
    return obj


# Values that are prose may wrap in a terminal; URLs, paths and hashes never do.
_WRAPPED = frozenset({"backbone net", "decode head", "auxiliary head", "test", "alternatives", "classes", "hosts"})

# The published host: primary, and flaky (what users of every OpenMMLab project met; see docs/weights.md).
OPENMMLAB_HOST = "download.openmmlab.com"


def host_note(entry: psegzoo.Entry) -> str | None:
    """How the weights' URLs are used, for entries published on download.openmmlab.com."""
    w = entry.weights
    if w is None or urlsplit(w.url).hostname != OPENMMLAB_HOST:
        return None
    then = "goes on to the fallback URLs on its own" if w.urls else "says what to do"
    return (f"the original URL comes first (after any --mirror you give). {OPENMMLAB_HOST} has failed before: its "
            f"TLS certificate expired in August 2025 and its domain lapsed from 2026-06-06 to about 2026-06-09, then "
            f"came back. When it fails, psegzoo {then}")


def info_lines(rows: Sequence[tuple[str, str]], width: int | None) -> list[str]:
    """``key  value`` lines; with a ``width`` (a terminal), prose values wrap under themselves."""
    key_width = max(len(k) for k, _ in rows)
    lines = []
    for key, value in rows:
        lead = f"  {click.style(key.ljust(key_width), fg='cyan')}  "
        indent = 2 + key_width + 2
        if width is not None and key in _WRAPPED and indent + len(value) > width and width - indent >= 20:
            parts = textwrap.wrap(value, width - indent, break_long_words=False, break_on_hyphens=False)
            lines.append(lead + parts[0])
            lines.extend(" " * indent + p for p in parts[1:])
        else:
            lines.append(lead + value)
    return lines


@click.command("info")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (its 'name' is the canonical name).")
@index_option
@handle_errors
def info_command(name: str, as_json: bool) -> None:
    """Show every field of one checkpoint.

    NAME may be the canonical name, the published file name, the mmseg 1.x config name or a
    short alias (<method>_<backbone>_<dataset>), in any case.
    """
    resolution = psegzoo.resolve(name, index=manifest_index())
    obj = _info_object(resolution)
    if as_json:
        click.echo(json.dumps(obj, indent=1, allow_nan=False))
        return
    out = _resolved_lines(name, resolution)
    rows = [*_summary_rows(resolution.entry), *_weights_rows(resolution.entry, obj), *_model_rows(resolution.entry)]
    if resolution.alternatives:
        rows.append(("alternatives", ", ".join(a.name for a in resolution.alternatives)))
    rows.append(("classes", ", ".join(obj["classes"])))
    out += info_lines(rows, terminal_width() if sys.stdout.isatty() else None)
    click.echo("\n".join(out))


def _resolved_lines(name: str, resolution: psegzoo.Resolution) -> list[str]:
    """What ``name`` resolved to (when it was not the canonical name), then the name in bold."""
    e = resolution.entry
    out: list[str] = []
    if resolution.is_alias:
        out.append(click.style(f"{name} resolved to {e.name}, {alias_choice(len(resolution.alternatives))}", dim=True))
    elif name.strip().lower() != e.name.lower():
        out.append(click.style(f"{name} is {e.name}", dim=True))
    out.append(click.style(e.name, bold=True))
    return out


def _summary_rows(e: psegzoo.Entry) -> list[tuple[str, str]]:
    return [
        ("method", e.method),
        ("backbone", e.backbone),
        ("dataset", f"{e.dataset} ({e.architecture.num_classes} classes)"),
        ("source", e.source),
        ("config", e.config or "-"),
        ("crop size", f"{e.crop_size[0]}x{e.crop_size[1]}"),
        ("schedule", str(e.schedule)),
        ("mIoU", fmt(e.miou, 2)),
        ("mIoU (ms+flip)", fmt(e.miou_ms_flip, 2)),
        ("memory (GB)", fmt(e.mem_gb)),
        ("fps", fmt(e.fps, 2)),
        ("fp16 training", "yes" if e.fp16 else "no"),
    ]


def _weights_rows(e: psegzoo.Entry, obj: dict[str, Any]) -> list[tuple[str, str]]:
    """Where the weights are (in the order they are tried), their hash, and the cached copy."""
    w = e.weights
    rows = [("weights", w.url if w else "none published yet")]
    rows += [("fallback", url) for url in (w.urls if w else ())]
    note = host_note(e)
    if note:
        rows.append(("hosts", note))
    rows.append(("sha256 prefix", (w.sha256_prefix or "none published") if w else "-"))
    cache_path = obj.get("cache_path") if obj["cached"] else None
    rows.append(("cached", cache_path or "no"))
    if cache_path:
        rows.append(("cached sha256",
                     obj["cached_sha256"] or "not recorded yet (checked on next use, or run 'psegzoo verify')"))
    return rows


def _model_rows(e: psegzoo.Entry) -> list[tuple[str, str]]:
    """The architecture, the test settings and the results on other datasets."""
    arch, test = e.architecture, e.test
    bb = arch.backbone
    rows = [
        (
            "backbone net",
            f"{bb.type} depth {bb.depth}, strides {list(bb.strides)}, dilations {list(bb.dilations)}"
            + (f", multi-grid {list(bb.multi_grid)}" if bb.multi_grid else "")
            + (", contract dilation" if bb.contract_dilation else ""),
        ),
        ("decode head", _head_text(arch.decode_head)),
        ("auxiliary head", _head_text(arch.auxiliary_head) + " (training only, not built)" if arch.auxiliary_head else "-"),
        ("align corners", str(arch.align_corners).lower()),
        (
            "test",
            f"{test.mode}, scale {list(test.scale)}"
            + (f", crop {list(test.crop_size or ())}, stride {list(test.stride or ())}" if test.mode == "slide" else "")
            + (", logits resized straight to the original size" if test.resize_logits == "direct" else ""),
        ),
        ("mean / std", f"{list(test.mean)} / {list(test.std)}"),
    ]
    rows += [(f"result on {r.dataset}", f"mIoU {fmt(r.miou, 2)}, ms+flip {fmt(r.miou_ms_flip, 2)}") for r in e.results]
    return rows


def alias_choice(alternatives: int) -> str:
    """How an alias picked its entry, in words that agree with the count."""
    if alternatives == 0:
        return "its only match"
    return f"the best single-scale mIoU of its {alternatives + 1} matches"


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
