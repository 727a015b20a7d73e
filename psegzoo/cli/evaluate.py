"""``psegzoo eval``: measure a checkpoint's mIoU on a dataset folder, beside the published figure."""
from __future__ import annotations

import json
from typing import Any

import click

import psegzoo

from .common import (
    console,
    download_options,
    download_settings,
    escape,
    fail,
    fmt,
    handle_errors,
    index_option,
    manifest_index,
    pair_option,
)
from .jobs import as_job

LAYOUTS = ("cityscapes", "ade20k", "voc12aug", "pascal_context", "pascal_context_59", "coco-stuff164k",
           "coco-stuff10k", "generic")


class _ProgressView:
    """A rich progress bar on stderr (images/s, ETA, running mIoU), started at the first report."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.progress: Any = None
        self.task: Any = None
        self.done = 0
        self.total = 0

    def __call__(self, state: Any) -> None:
        self.done, self.total = state.done, state.total
        if not self.enabled:
            return
        if self.progress is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[speed]}"), TimeRemainingColumn(), TextColumn("{task.fields[miou]}"),
                console=console(stderr=True), transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task("evaluating", total=state.total, completed=state.done, speed="", miou="")
        rate = state.images_per_second
        self.progress.update(self.task, completed=state.done,
                             speed=f"{rate:.2f} img/s" if rate else "",
                             miou=f"mIoU {state.miou:.2f}" if state.miou is not None else "")

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def check_request(*, half: bool, bf16: bool, data_root: Any, images_dir: Any, labels_dir: Any, name: str,
                  device: str, **_options: Any) -> None:
    """Refuse, before torch is imported, what needs no torch to refuse: option clashes, a missing
    dataset, an unknown model, a malformed device name."""
    if half and bf16:
        raise click.UsageError("choose one of --half and --bf16")
    if data_root is None and images_dir is None and labels_dir is None:
        raise click.UsageError("give the dataset root with --data ROOT (or --images DIR --labels DIR)")
    psegzoo.parse_device(device)
    psegzoo.get_entry(name, index=manifest_index())


@click.command("eval")
@click.option("-m", "--model", "name", required=True, help="Model name or alias, e.g. pspnet_r50-d8_512x1024_40k_cityscapes.")
@click.option("--data", "data_root", type=click.Path(file_okay=False),
              help="Dataset root, laid out as mmseg's converters leave it (see --layout).")
@click.option("--split", help="Split to evaluate (default: val; coco-stuff10k's is test2014).")
@click.option("--layout", type=click.Choice(LAYOUTS, case_sensitive=False),
              help="Folder layout (default: the model's dataset; generic with --images/--labels).")
@click.option("--images", "images_dir", type=click.Path(file_okay=False), help="Generic layout: folder of images.")
@click.option("--labels", "labels_dir", type=click.Path(file_okay=False),
              help="Generic layout: folder of label PNGs (same relative names as the images).")
@click.option("--label-suffix", help="Generic layout: label file = image name without extension + this (default .png).")
@click.option("--reduce-zero-label", is_flag=True, default=None,
              help="Generic layout: label 0 is 'other' (ignored) and classes are 1..C (mmseg's reduce_zero_label).")
@click.option("--ignore-index", type=click.IntRange(0, None), help="Generic layout: label value left out (default 255).")
@click.option("--weights", type=click.Path(dir_okay=False), help="Local mmseg/SSSegmentation checkpoint or converted .safetensors.")
@click.option("--ms-flip", is_flag=True, help="The published ms+flip setting: ratios 0.5-1.75 of the test scale, and flips.")
@click.option("--limit", type=click.IntRange(1, None), help="Evaluate only the first N images of the split.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (figures, per-class table, settings).")
@click.option("--save-predictions", type=click.Path(file_okay=False), metavar="DIR",
              help="Also write each prediction as a palette PNG DIR/<name>.png (pixel value = class index).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from the counts saved in the work folder.")
@click.option("--work-dir", type=click.Path(file_okay=False),
              help="Where per-image counts are saved as the run goes (default: eval/ in the cache root, PSEGZOO_HOME; "
                   "one subfolder per model, weights, data and settings).")
@click.option("--mode", type=click.Choice(["whole", "slide"]), help="Override the checkpoint's test mode (non-standard).")
@click.option("--crop-size", help="Slide window HxW (non-standard).")
@click.option("--stride", help="Slide stride HxW (non-standard).")
@click.option("--scale", help="Test scale LONGxSHORT (non-standard), e.g. 1024x512.")
@click.option("--device", default="auto", show_default=True, help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps.")
@click.option("--half", is_flag=True, help="float16 autocast (CUDA, MPS).")
@click.option("--bf16", is_flag=True, help="bfloat16 autocast (CUDA, MPS, CPU).")
@click.option("--batch-windows", type=click.IntRange(1, 1024), help="Sliding windows per forward (default: sized to free GPU memory).")
@click.option("--workers", type=click.IntRange(0, 64),
              help="Threads decoding images and labels ahead of the model "
                   "(default: one per core but one beside a GPU, at most 16; none on the CPU).")
@click.option("--max-pixels", type=click.IntRange(1, None), help="Refuse larger images (decompression-bomb guard).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@download_options
@index_option
@handle_errors
@as_job(check=check_request)
def eval_command(name, data_root, split, layout, images_dir, labels_dir, label_suffix, reduce_zero_label, ignore_index,
                 weights, ms_flip, limit, as_json, save_predictions, resume, work_dir, mode, crop_size, stride, scale,
                 device, half, bf16, batch_windows, workers, max_pixels, quiet, job) -> None:
    """Evaluate a checkpoint on a dataset folder with mmseg's metric (aAcc, mIoU, mAcc).

    \b
    Examples:
      psegzoo eval -m pspnet_r50-d8_512x1024_40k_cityscapes --data data/cityscapes
      psegzoo eval -m upernet_r50_512x512_160k_ade20k \\
          --data data/ade/ADEChallengeData2016 --ms-flip
      psegzoo eval -m pspnet_r50-d8_512x1024_40k_cityscapes \\
          --images my/imgs --labels my/labels --json
      torchrun --nproc-per-node 4 -m psegzoo eval \\
          -m pspnet_r50-d8_512x1024_40k_cityscapes --data data/cityscapes

    Prints the per-class IoU and Acc, then aAcc / mIoU / mAcc beside the published mIoU.
    Under torchrun the images are shared out and the counts summed: the figures are those of one
    process. Interrupted? Run the same command with --resume.
    """
    download = download_settings(progress=False if quiet else None)
    view = _ProgressView(enabled=job.is_main and not quiet and console(stderr=True).is_terminal)
    try:
        result = psegzoo.evaluate(
            name, data_root, split=split, layout=layout.lower() if layout else None, images=images_dir,
            labels=labels_dir, label_suffix=label_suffix, reduce_zero_label=reduce_zero_label, ignore_index=ignore_index,
            weights=weights, device=device, ms_flip=ms_flip, mode=mode, crop_size=pair_option(crop_size, "--crop-size"),
            stride=pair_option(stride, "--stride"), scale=pair_option(scale, "--scale"),
            amp_dtype="float16" if half else "bfloat16" if bf16 else None, limit=limit, batch_windows=batch_windows,
            save_predictions=save_predictions, work_dir=work_dir, resume=resume, workers=workers,
            max_pixels=max_pixels, on_progress=view, job=job, download=download)
    except KeyboardInterrupt:
        view.stop()
        fail(f"interrupted after {view.done} of {view.total} images; the same command with --resume continues "
             "from there", code=130)
    finally:
        view.stop()
    if not job.is_main:
        return
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=1))
        return
    print_report(result)


def _describe(settings: Any) -> str:
    text = f"scale {settings.scale[0]}x{settings.scale[1]}, {settings.mode}"
    if settings.mode == "slide" and settings.crop_size and settings.stride:
        text += f" crop {settings.crop_size[0]}x{settings.crop_size[1]} stride {settings.stride[0]}x{settings.stride[1]}"
    if settings.tta == "ms+flip":
        text += ", ms+flip"
    elif settings.tta == "custom":
        text += f", flip={settings.flip} scales={list(settings.scales) if settings.scales else None}"
    if settings.amp_dtype:
        text += f", {settings.amp_dtype} autocast"
    return text


def print_report(result: Any) -> None:
    """The per-class table, then aAcc / mIoU / mAcc beside the published figure."""
    from rich.table import Table

    out = console()
    where = f"{result.dataset} {result.split}" if result.split else f"{result.settings.image_dir}"
    classes = Table(header_style="bold")
    for column in ("class", "IoU", "Acc"):
        classes.add_column(column, justify="left" if column == "class" else "right")
    for row in result.per_class:
        classes.add_row(escape(row.name), fmt(row.iou, 2), fmt(row.acc, 2))
    published = result.published
    difference = result.difference
    summary = Table(header_style="bold")
    for column in ("metric", "measured", "published", "difference"):
        summary.add_column(column, justify="left" if column == "metric" else "right")
    summary.add_row("aAcc", fmt(result.aacc, 2), "-", "-")
    summary.add_row("mIoU", fmt(result.miou, 2), fmt(published, 2),
                    "-" if difference is None else f"{difference:+.2f}")
    summary.add_row("mAcc", fmt(result.macc, 2), "-", "-")
    if not out.is_terminal:
        out.width = max(out.width, 100)
    out.print(f"[bold]{escape(result.model)}[/] on {escape(where)}: {result.images} images", soft_wrap=True)
    out.print(classes)
    out.print(summary)
    settings = result.settings
    out.print(f"settings: {escape(_describe(settings))}" + ("" if settings.standard else " (non-standard)"), soft_wrap=True)
    if settings.labels_converted:
        out.print(f"{settings.labels_converted} label(s) read from *_gtFine_labelIds.png and mapped to trainIds",
                  soft_wrap=True)
    if published is not None and not result.comparable:
        out.print(f"not comparable with the published {published:.2f}: {escape('; '.join(settings.not_comparable))}",
                  soft_wrap=True)
    rate = result.images_per_second
    timing = f"{result.seconds:.1f} s" + (f", {rate:.2f} images/s" if rate else "")
    if result.resumed:
        timing += f"; {result.resumed} image(s) taken from {escape(result.work_dir)}"
    out.print(timing, soft_wrap=True)
