"""The ``psegzoo`` command line.

Uses only the public API of the ``psegzoo`` package. Torch is imported only by the commands that
run models (``convert``, ``predict``, ``bench``), so ``list`` and ``info`` stay instant.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click

import psegzoo

SORT_KEYS = ("miou", "fps", "mem", "name")


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def _fail(message: str, code: int = 1) -> None:
    # One unwrapped line: URLs and paths in the message stay whole (copyable, greppable).
    _console(stderr=True).print(f"[bold red]error:[/] {_escape(message)}", soft_wrap=True)
    sys.exit(code)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(str(text))


def _handle_errors(func: Callable) -> Callable:
    """Render our own errors as one line and a non-zero exit, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except psegzoo.PsegzooError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted", code=130)

    return wrapper


def _index_option(func: Callable) -> Callable:
    """``--index FILE`` (repeatable) on every command: extra manifests merged over the built-in one."""

    def remember(ctx: click.Context, _param: click.Parameter, value: Sequence[str]) -> None:
        if value:
            current = [p for p in os.environ.get("PSEGZOO_INDEX", "").split(os.pathsep) if p]
            os.environ["PSEGZOO_INDEX"] = os.pathsep.join(current + [str(Path(v).resolve()) for v in value])

    return click.option(
        "--index",
        multiple=True,
        type=click.Path(dir_okay=False),
        expose_value=False,
        callback=remember,
        is_eager=True,
        help="Extra manifest JSON merged over the built-in one (same schema). Repeatable.",
    )(func)


def _fmt(value: Any, digits: int | None = None) -> str:
    if value is None:
        return "-"
    if digits is not None and isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _fmt_size(num_bytes: int | None) -> str:
    if num_bytes is None:
        return "-"
    size = float(num_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _is_cached(entry: psegzoo.Entry) -> bool:
    if entry.weights is None:
        return False
    return psegzoo.checkpoint_path(entry).is_file()


def _sorted(entries: list[psegzoo.Entry], key: str) -> list[psegzoo.Entry]:
    lowest = float("-inf")
    if key == "miou":
        return sorted(entries, key=lambda e: (e.miou if e.miou is not None else lowest), reverse=True)
    if key == "fps":
        return sorted(entries, key=lambda e: (e.fps if e.fps is not None else lowest), reverse=True)
    if key == "mem":
        return sorted(entries, key=lambda e: (e.mem_gb is None, e.mem_gb or 0.0))
    return sorted(entries, key=lambda e: e.name)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(psegzoo.__version__, prog_name="psegzoo")
def main() -> None:
    """Published mmsegmentation segmentation checkpoints, with nothing but PyTorch.

    \b
    Examples:
      psegzoo list --dataset ade20k
      psegzoo info pspnet_r101-d8_cityscapes
      psegzoo download upernet_r50_ade20k
      psegzoo predict --model pspnet_r101-d8_cityscapes street.png
    """


# --------------------------------------------------------------------------------------------
# list / info
# --------------------------------------------------------------------------------------------


@main.command("list")
@click.argument("pattern", required=False)
@click.option("--dataset", help="Dataset id or common spelling (ade20k, ADE, voc, pascal_voc, cityscapes, ...).")
@click.option("--method", help="PSPNet, PSANet, DeepLabV3 or UPerNet (case-insensitive).")
@click.option("--backbone", help="Backbone as printed in the tables, e.g. R-101-D8 (wildcards allowed).")
@click.option("--sort", "sort_key", type=click.Choice(SORT_KEYS), default=None, help="Sort order (default: manifest order).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of the manifest's model objects.")
@_index_option
@_handle_errors
def list_command(
    pattern: str | None, dataset: str | None, method: str | None, backbone: str | None, sort_key: str | None, as_json: bool
) -> None:
    """List checkpoints; PATTERN is a shell-style wildcard on names ('*r101*')."""
    entries = psegzoo.list_models(pattern, dataset=dataset, method=method, backbone=backbone)
    if sort_key:
        entries = _sorted(entries, sort_key)
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
            _escape(e.name),
            e.method,
            _escape(e.backbone),
            f"{e.crop_size[0]}x{e.crop_size[1]}",
            _escape(str(e.schedule)),
            _fmt(e.miou, 2),
            _fmt(e.miou_ms_flip, 2),
            _fmt(e.fps, 2),
            _fmt(e.mem_gb),
            "yes" if _is_cached(e) else "",
        )
    console = _console()
    if not console.is_terminal:
        console.width = max(console.width, 200)
    console.print(table)


def _info_object(resolution: psegzoo.Resolution) -> dict[str, Any]:
    entry = resolution.entry
    obj = entry.to_json()
    dataset = psegzoo.get_dataset(entry.dataset)
    obj["query"] = resolution.query
    obj["is_alias"] = resolution.is_alias
    obj["alternatives"] = [a.name for a in resolution.alternatives]
    obj["classes"] = list(dataset.classes)
    obj["cached"] = _is_cached(entry)
    if entry.weights is not None:
        obj["cache_path"] = str(psegzoo.checkpoint_path(entry))
    return obj


@main.command("info")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (its 'name' is the canonical name).")
@_index_option
@_handle_errors
def info_command(name: str, as_json: bool) -> None:
    """Show every field of one checkpoint (canonical name, published file name or short alias)."""
    resolution = psegzoo.resolve(name)
    obj = _info_object(resolution)
    if as_json:
        click.echo(json.dumps(obj, indent=1))
        return
    e = resolution.entry
    console = _console()
    if resolution.is_alias:
        console.print(f"[dim]{_escape(name)} resolved to the best single-scale mIoU among {1 + len(resolution.alternatives)} matches[/]")
    console.print(f"[bold]{_escape(e.name)}[/]")
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
        ("mIoU", _fmt(e.miou, 2)),
        ("mIoU (ms+flip)", _fmt(e.miou_ms_flip, 2)),
        ("memory (GB)", _fmt(e.mem_gb)),
        ("fps", _fmt(e.fps, 2)),
        ("fp16 training", "yes" if e.fp16 else "no"),
        ("weights", e.weights.url if e.weights else "none published yet"),
        ("sha256 prefix", (e.weights.sha256_prefix or "none published") if e.weights else "-"),
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
        rows.append((f"result on {r.dataset}", f"mIoU {_fmt(r.miou, 2)}, ms+flip {_fmt(r.miou_ms_flip, 2)}"))
    if resolution.alternatives:
        rows.append(("alternatives", ", ".join(a.name for a in resolution.alternatives)))
    rows.append(("classes", ", ".join(obj["classes"])))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        console.print(f"  [cyan]{key.ljust(width)}[/]  {_escape(value)}")


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


# --------------------------------------------------------------------------------------------
# download / cache / verify / import
# --------------------------------------------------------------------------------------------


# Warnings the cache module logs that these commands print themselves (said once, not twice).
_TRUSTED_LOG = "%s has no published hash; trusting the downloaded file"
_REMOVED_LOG = "removed %s from the cache"


@contextlib.contextmanager
def _not_logged(*message_starts: str) -> Iterator[None]:
    """Drop the cache module's log records that start with ``message_starts`` while in the block."""
    logger = logging.getLogger("psegzoo.hub")

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(message_starts)

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _download_options(func: Callable) -> Callable:
    """Options shared by every command that may fetch weights."""
    options = [
        click.option("--mirror", "mirrors", multiple=True, metavar="URL",
                     help="Base URL tried before the original host (repeatable; also PSEGZOO_MIRROR)."),
        click.option("--offline", is_flag=True, default=None,
                     help="No network access; use cached files only (also PSEGZOO_OFFLINE=1)."),
        click.option("--allow-unverified", is_flag=True, default=None,
                     help="Allow a checkpoint that has no published hash; its SHA-256 is recorded and trusted from then on."),
        click.option("--sha256", "sha256", metavar="HEX",
                     help="Pin the SHA-256 the file must have (for checkpoints without a published hash)."),
        click.option("--retries", type=click.IntRange(0, 50), default=None, help="Retries per URL (default 4; PSEGZOO_RETRIES)."),
        click.option("--timeout", type=click.FloatRange(0.1, None), default=None,
                     help="Read timeout in seconds: a stalled server fails after this (default 60; PSEGZOO_TIMEOUT)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _download_kwargs(mirrors: Sequence[str], offline: bool | None, allow_unverified: bool | None,
                     sha256: str | None, retries: int | None, timeout: float | None) -> dict[str, Any]:
    return {
        "mirrors": list(mirrors) or None,
        "offline": offline,
        "allow_unverified": allow_unverified,
        "sha256": sha256,
        "retries": retries,
        "timeout": timeout,
    }


@main.command("download")
@click.argument("names", nargs=-1, required=True)
@_download_options
@click.option("--force", is_flag=True, help="Download again even if a verified copy is cached.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_index_option
@_handle_errors
def download_command(names: Sequence[str], mirrors, offline, allow_unverified, sha256, retries, timeout,
                     force: bool, quiet: bool) -> None:
    """Download and verify checkpoints into the cache (prints each cached path).

    Every file is checked against its published SHA-256 prefix before it is kept. Checkpoints that
    publish no hash need --allow-unverified (trust on first use) or --sha256 HEX.
    """
    kwargs = _download_kwargs(mirrors, offline, allow_unverified, sha256, retries, timeout)
    failed = 0
    err = _console(stderr=True)
    for name in names:
        try:
            entry = psegzoo.get_entry(name)
            with _not_logged(_TRUSTED_LOG):
                fetched = psegzoo.fetch(entry, progress=False if quiet else None, force=force, **kwargs)
        except psegzoo.PsegzooError as exc:
            failed += 1
            err.print(f"[bold red]error:[/] {_escape(exc)}", soft_wrap=True)
            continue
        if fetched.newly_trusted:
            err.print(
                f"[yellow]{_escape(entry.name)} publishes no hash; trusted on first use with SHA-256 "
                f"{fetched.sha256}[/] (every later use must match it)",
                soft_wrap=True,
            )
        click.echo(str(fetched.path))
    if failed:
        sys.exit(1)


@main.group("cache", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON.")
@click.pass_context
@_index_option
@_handle_errors
def cache_group(ctx: click.Context, as_json: bool) -> None:
    """List cached checkpoints (name, size, hash, converted); 'cache rm' removes them."""
    if ctx.invoked_subcommand is not None:
        return
    items = psegzoo.cached()
    total = sum(i.size for i in items) + sum(i.converted_size or 0 for i in items)
    if as_json:
        rows = [{"name": i.name, "file": i.file, "path": str(i.path), "size": i.size, "sha256": i.sha256,
                 "converted": i.converted, "converted_size": i.converted_size, "url": i.url,
                 "source": i.source, "at": i.at, "trusted": i.trusted} for i in items]
        click.echo(json.dumps({"root": str(psegzoo.cache_root()), "total_bytes": total, "checkpoints": rows}, indent=1))
        return
    from rich.table import Table

    console = _console()
    table = Table(title=f"cache: {psegzoo.cache_root()}", title_justify="left", header_style="bold")
    for column in ("name", "file", "size", "sha256", "converted"):
        table.add_column(column, no_wrap=column in ("name", "file"))
    for i in items:
        table.add_row(_escape(i.name or "?"), _escape(i.file), _fmt_size(i.size), (i.sha256 or "-")[:16],
                      _fmt_size(i.converted_size) if i.converted else "no")
    if not console.is_terminal:
        console.width = max(console.width, 200)
    console.print(table)
    console.print(f"{len(items)} checkpoint(s), {_fmt_size(total)} in total")


@cache_group.command("rm")
@click.argument("names", nargs=-1)
@click.option("--all", "remove_all", is_flag=True, help="Remove every cached checkpoint and converted file.")
@click.option("--forget-trust", is_flag=True,
              help="Also forget hashes trusted on first use (a later download may then have another hash).")
@_index_option
@_handle_errors
def cache_rm_command(names: Sequence[str], remove_all: bool, forget_trust: bool) -> None:
    """Remove cached checkpoints by name (or --all)."""
    if not names and not remove_all:
        raise click.UsageError("give one or more model names, or --all")
    if remove_all:
        removed = psegzoo.remove(all=True, forget_trust=forget_trust)
    else:
        removed = []
        for name in names:
            removed += psegzoo.remove(psegzoo.get_entry(name), forget_trust=forget_trust)
    for path in removed:
        click.echo(f"removed {path}")
    if not removed:
        click.echo("nothing to remove")


@main.command("verify")
@click.argument("names", nargs=-1)
@_index_option
@_handle_errors
def verify_command(names: Sequence[str]) -> None:
    """Re-hash cached checkpoints against their records; a mismatching file is deleted."""
    entries = [psegzoo.get_entry(n) for n in names] or [None]
    bad = 0
    for entry in entries:
        with _not_logged(_REMOVED_LOG):
            reports = psegzoo.verify(entry, full=True)
        for report in reports:
            ok = report.ok
            bad += not ok
            mark = "[green]ok[/]" if ok else f"[bold red]{report.status}[/]"
            detail = f"sha256 {report.sha256}" if ok else (report.problem or "")
            if report.removed:
                detail += " (deleted; it will be downloaded again on next use)"
            _console().print(f"{mark}  {_escape(report.name or report.file)}  {_escape(detail)}", soft_wrap=True)
    if bad:
        sys.exit(1)


@main.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--name", help="Model name (default: taken from the file name).")
@click.option("--sha256", "sha256", metavar="HEX", help="Pin the SHA-256 the file must have.")
@_index_option
@_handle_errors
def import_command(file: str, name: str | None, sha256: str | None) -> None:
    """Put a checkpoint you already have into the cache (air-gapped or host-down use).

    The file must match the published hash. For a checkpoint that publishes none, importing it
    records its SHA-256 as trusted (or checks it against --sha256 / an earlier trust record).
    """
    entry, path = psegzoo.import_checkpoint(file, name=name, sha256=sha256)
    click.echo(f"imported {entry.name} -> {path}")


# --------------------------------------------------------------------------------------------
# convert / predict / bench
# --------------------------------------------------------------------------------------------


def _pair_option(value: str | None, what: str) -> tuple[int, int] | None:
    """Parse ``512``, ``512x1024`` or ``512,1024`` into a pair of positive ints."""
    if value is None:
        return None
    parts = value.lower().replace(",", "x").split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) <= 0:
        raise click.BadParameter(f"{value!r} is not a size; use N or AxB with positive integers, e.g. 512x1024", param_hint=what)
    return nums[0], nums[1]


def _ratios_option(value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        ratios = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        ratios = []
    if not ratios or min(ratios) <= 0:
        raise click.BadParameter(f"{value!r} is not a list of positive ratios, e.g. 0.5,0.75,1.0,1.25,1.5,1.75",
                                 param_hint="--scales")
    return ratios


@main.command("convert")
@click.argument("source")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output .safetensors (default: the cache, or beside FILE).")
@click.option("--model", "name", help="Model name when SOURCE is a file whose name does not say it.")
@_download_options
@_index_option
@_handle_errors
def convert_command(source: str, output: str | None, name: str | None, mirrors, offline, allow_unverified, sha256,
                    retries, timeout) -> None:
    """Convert a checkpoint (NAME or FILE) to psegzoo's safetensors format."""
    kwargs = _download_kwargs(mirrors, offline, allow_unverified, sha256, retries, timeout)
    out = psegzoo.convert_checkpoint(source, output, name=name, **kwargs)
    click.echo(str(out))


@main.command("predict")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-m", "--model", "name", required=True, help="Model name or alias, e.g. pspnet_r101-d8_cityscapes.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Local mmseg/SSSegmentation checkpoint or converted .safetensors.")
@click.option("-o", "--output", "out_dir", default="psegzoo_out", show_default=True, type=click.Path(file_okay=False),
              help="Output folder.")
@click.option("--overlay", is_flag=True, help="Also write <stem>_overlay.png (colours over the image).")
@click.option("--opacity", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True, help="Overlay opacity.")
@click.option("--color", is_flag=True, help="Also write <stem>_color.png (the colour map alone).")
@click.option("--probs", type=click.Choice(["png", "npy"]), is_flag=False, flag_value="png", default=None,
              help="Also write per-pixel confidence (max softmax): 16-bit PNG (default) or float32 .npy.")
@click.option("--logits", "save_logits", is_flag=True, help="Also write <stem>_logits.npy (float16, C x H x W).")
@click.option("--json", "save_json", is_flag=True, help="Also write <stem>.json: class areas, model, timings.")
@click.option("--mode", type=click.Choice(["whole", "slide"]), help="Override the checkpoint's test mode.")
@click.option("--crop-size", help="Slide window HxW (e.g. 512x1024).")
@click.option("--stride", help="Slide stride HxW (default: the checkpoint's, or 2/3 of the crop).")
@click.option("--scale", help="Test scale LONGxSHORT for the keep-ratio resize (e.g. 2048x1024).")
@click.option("--flip", is_flag=True, help="Test-time augmentation: add horizontally flipped views.")
@click.option("--scales", help="Test-time augmentation: ratios of the test scale, e.g. 0.5,0.75,1.0,1.25,1.5,1.75.")
@click.option("--device", default="auto", show_default=True, help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps.")
@click.option("--half", is_flag=True, help="float16 autocast (GPU only).")
@click.option("--bf16", is_flag=True, help="bfloat16 autocast (GPU only).")
@click.option("--compile", "use_compile", is_flag=True, help="torch.compile the model (slow first image).")
@click.option("--batch-windows", type=click.IntRange(1, 1024),
              help="Sliding windows per forward (default: sized to free GPU memory; 2 on CPU).")
@click.option("--max-pixels", type=click.IntRange(1, None), help="Refuse larger images (decompression-bomb guard; PSEGZOO_MAX_PIXELS).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
@_download_options
@_index_option
@_handle_errors
def predict_command(inputs, name, weights, out_dir, overlay, opacity, color, probs, save_logits, save_json, mode,
                    crop_size, stride, scale, flip, scales, device, half, bf16, use_compile, batch_windows,
                    max_pixels, quiet, mirrors, offline, allow_unverified, sha256, retries, timeout) -> None:
    """Segment images (files, folders, globs) and write label maps as palette PNGs.

    \b
    Example:
      psegzoo predict --model pspnet_r101-d8_cityscapes street.png --overlay
    Each image gives OUT/<stem>.png (pixel value = class index). A bad image is reported and
    skipped; the exit code is 1 if any input failed.
    """
    if half and bf16:
        raise click.UsageError("choose one of --half and --bf16")
    overrides = dict(mode=mode, crop_size=_pair_option(crop_size, "--crop-size"), stride=_pair_option(stride, "--stride"),
                     scale=_pair_option(scale, "--scale"))
    ratios = _ratios_option(scales)
    entry = psegzoo.get_entry(name)
    # Check the settings before any download, so a bad stride fails at once.
    psegzoo.inference_settings(entry, **overrides)
    found = psegzoo.find_images(inputs, exclude=[out_dir])
    err = _console(stderr=True)
    failures = 0
    for problem in found.errors:
        failures += 1
        err.print(f"[bold red]error:[/] {_escape(problem)}", soft_wrap=True)
    if not found.images:
        _fail("no images to predict" + ("" if found.errors else f" in {', '.join(inputs)}"))
    segmenter = psegzoo.load(
        entry.name, weights=weights, device=device,
        **_download_kwargs(mirrors, offline, allow_unverified, sha256, retries, timeout),
        progress=False if quiet else None,
    )
    if use_compile:
        segmenter.compile()
    amp = "float16" if half else "bfloat16" if bf16 else None
    names = psegzoo.unique_output_names([img.relative for img in found.images])
    written = 0
    progress = None
    if not quiet and err.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=err, transient=True)
        progress.start()
        task = progress.add_task("predicting", total=len(found.images))
    try:
        for image, out_name in zip(found.images, names):
            try:
                prediction = segmenter.predict(image.path, flip=flip, scales=ratios, batch_windows=batch_windows,
                                               amp_dtype=amp, max_pixels=max_pixels, **overrides)
                paths = prediction.write(out_dir, out_name, overlay=overlay, opacity=opacity, color=color,
                                         probs=probs, logits=save_logits, summary=save_json)
                written += 1
            except (psegzoo.ImageError, psegzoo.OutputError) as exc:
                failures += 1
                err.print(f"[bold red]error:[/] {_escape(exc)}", soft_wrap=True)
            else:
                if quiet:
                    pass
                elif progress is None:
                    click.echo(str(paths[0]))
            if progress is not None:
                progress.advance(task)
    finally:
        if progress is not None:
            progress.stop()
    if not quiet:
        err.print(f"{written} image(s) written to {_escape(out_dir)}" + (f", {failures} failed" if failures else ""),
                  soft_wrap=True)
    if failures:
        sys.exit(1)


@main.command("bench")
@click.argument("name")
@click.option("--size", default="1024x2048", show_default=True, help="Image size HxW.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or mps.")
@click.option("--mode", "modes", multiple=True, type=click.Choice(["whole", "slide"]),
              help="Modes to time (default: both).")
@click.option("--repeat", type=click.IntRange(1, 100), default=1, show_default=True, help="Timed runs per mode.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Checkpoint to use (default: cached, else initial weights).")
@click.option("--no-baseline", is_flag=True, help="Skip the naive baseline (one window at a time, no channels_last, no BN folding).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@_index_option
@_handle_errors
def bench_command(name, size, device, modes, repeat, weights, no_baseline, as_json) -> None:
    """Time load and prediction of one model against a naive baseline in the same run."""
    hw = _pair_option(size, "--size")
    report = psegzoo.benchmark(name, size=hw, device=device, modes=list(modes) or ["whole", "slide"], repeat=repeat,
                               weights=weights, baseline=not no_baseline,
                               log=None if as_json else lambda msg: _console(stderr=True).print(_escape(msg)))
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    from rich.table import Table

    table = Table(title=f"{report['model']} on {report['device']}, image {hw[0]}x{hw[1]}", title_justify="left")
    for column in ("mode", "variant", "s / image", "images / s", "peak memory", "vs baseline", "labels equal"):
        table.add_column(column)
    for row in report["runs"]:
        table.add_row(row["mode"], row["variant"], f"{row['seconds']:.3f}", f"{1 / row['seconds']:.3f}",
                      _fmt_size(row.get("peak_bytes")), f"{row['speedup']:.2f}x" if row.get("speedup") else "-",
                      "-" if row.get("labels_equal") is None else f"{row['labels_equal'] * 100:.3f}%")
    console = _console()
    console.print(f"load: {report['load_seconds']:.2f} s ({report['weights']})")
    console.print(table)


if __name__ == "__main__":  # pragma: no cover
    main()
