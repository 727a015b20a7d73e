"""``psegzoo predict``: segment images and videos and write label maps.

Everything that can be checked is checked before the model is loaded (option combinations, the
device, the inputs, the output folder), and all of it but the test settings and whether the device
is present before torch is imported (:func:`prepare`), so a mistake costs a fraction of a second.
Under torchrun every process makes the same checks and the same list of inputs; the job then
shares the inputs out (see :mod:`psegzoo.distributed`) and only rank 0 prints.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

import psegzoo

from .common import (
    StatusLine,
    console,
    download_flags_given,
    download_options,
    download_settings,
    error_line,
    escape,
    fail,
    handle_errors,
    index_option,
    pair_option,
    printable,
    ratios_option,
)
from .jobs import as_job


def _given(ctx: click.Context, param: str) -> bool:
    source = ctx.get_parameter_source(param)
    return source is not None and source not in (click.core.ParameterSource.DEFAULT,
                                                  click.core.ParameterSource.DEFAULT_MAP)


def check_combinations(ctx: click.Context, *, inputs: Sequence[str], sample: bool, weights: str | None,
                       overlay: bool, half: bool, bf16: bool) -> None:
    """Refuse option combinations that cannot mean what the user wants (exit code 2, like click)."""
    if not inputs and not sample:
        raise click.UsageError("give the images to segment (files, folders or globs), or --sample to try the "
                               "sample image shipped with psegzoo")
    if half and bf16:
        raise click.UsageError("choose one of --half and --bf16")
    if _given(ctx, "opacity") and not overlay:
        raise click.UsageError("--opacity sets the overlay's opacity; add --overlay")
    if weights is not None:
        clashing = download_flags_given()  # every download option means nothing with a local file
        if clashing:
            raise click.UsageError(f"--weights reads a local file, so {', '.join(clashing)} would do nothing; "
                                   "drop one or the other")


def check_output_folder(out_dir: str) -> None:
    """The output folder exists as a writable folder, or can be created: checked without creating it."""
    try:
        _check_output_folder(Path(out_dir))
    except OSError as exc:  # a folder on the way that this user may not enter
        where = f" ({exc.filename})" if exc.filename is not None else ""
        raise psegzoo.OutputError(f"output folder {out_dir} cannot be reached: {exc.strerror or exc}{where}; "
                                  "choose another with -o/--output") from None


def _check_output_folder(path: Path) -> None:
    out_dir = str(path)
    probe = path
    while not probe.exists():
        if probe.is_symlink():
            raise psegzoo.OutputError(f"output folder {out_dir}: {probe} is a broken symbolic link")
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "is a file" if probe == path else f"cannot be created: {probe} is a file"
        raise psegzoo.OutputError(f"output folder {out_dir} {what}; choose another with -o/--output")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == path else f" (it would be created in {probe})"
        raise psegzoo.OutputError(f"output folder {out_dir} is not writable{where}; choose another with -o/--output")


def _json_line(obj: dict[str, Any]) -> str:
    # ASCII escapes keep any file name exact, even bytes that are not UTF-8.
    return json.dumps(obj, allow_nan=False)


@dataclass(frozen=True)
class Request:
    """A predict command line checked without torch, and the tasks it makes."""

    o: SimpleNamespace  # the command's options, as click gives them
    named: str | None  # the model's entry name (with --onnx: the one --model names, if any)
    overrides: dict[str, Any]
    ratios: list[float] | None
    download: Any
    amp: str | None
    tasks: list[Any]
    wanted: Any
    failures: int


def _model_name(o: SimpleNamespace, download: Any) -> str | None:
    """The entry name of --model (checked), refusing what cannot go with --onnx; parses --device."""
    psegzoo.parse_device(o.device)
    if o.onnx is not None:
        if o.weights or o.use_compile or o.half or o.bf16:
            raise click.UsageError("--weights, --compile, --half and --bf16 do not apply to --onnx (fixed at export)")
    elif o.name is None:
        raise click.UsageError("give the model with --model NAME (or an exported file with --onnx FILE)")
    return psegzoo.get_entry(o.name, index=download.index).name if o.name is not None else None


def _report_problems(found: Any, save_json: bool) -> int:
    """Print the inputs that cannot be read (one line each; a JSON line too with --json); their count."""
    err = console(stderr=True)
    for problem in found.errors:
        err.print(error_line(problem), soft_wrap=True)
        if save_json:
            click.echo(_json_line({"input": None, "error": printable(problem.cli_message())}))
    return len(found.errors)


def _report_renames(tasks: Sequence[Any], asked: Sequence[str], out_dir: str) -> None:
    err = console(stderr=True)
    for task, want in zip(tasks, asked):
        if want != task.name:
            where = os.path.join(out_dir, task.name) + ("" if task.is_video else ".png")
            err.print(f"[dim]{escape(printable(str(task.path)))} -> {escape(printable(where))} "
                      "(name taken by another input)[/]", soft_wrap=True)


def prepare(**options: Any) -> Request:
    """Check the command line without importing torch: options, model name, device name, inputs,
    output folder; then the tasks (videos need PyAV and take neither --probs nor --logits)."""
    o = SimpleNamespace(**options)
    check_combinations(click.get_current_context(), inputs=o.inputs, sample=o.sample, weights=o.weights,
                       overlay=o.overlay, half=o.half, bf16=o.bf16)
    overrides = dict(mode=o.mode, crop_size=pair_option(o.crop_size, "--crop-size"),
                     stride=pair_option(o.stride, "--stride"), scale=pair_option(o.scale, "--scale"))
    ratios = ratios_option(o.scales)
    o.max_pixels = psegzoo.max_pixels_limit(o.max_pixels)  # --max-pixels, else PSEGZOO_MAX_PIXELS: read once, checked now
    download = download_settings(progress=False if o.quiet else None)
    named = _model_name(o, download)
    sources = [*o.inputs, *([str(psegzoo.sample_image())] if o.sample else [])]
    found = psegzoo.find_images(sources, exclude=[o.out_dir], videos=True)
    failures = _report_problems(found, o.save_json)
    if not found.images:
        fail("no images to predict" + ("" if found.errors else f" in {', '.join(map(printable, sources))}"))
    check_output_folder(o.out_dir)
    asked = [img.relative for img in found.images]
    names = psegzoo.unique_output_names(asked, out_dir=o.out_dir, inputs=[img.path for img in found.images])
    wanted = psegzoo.distributed.Wanted(overlay=o.overlay, color=o.color, probs=o.probs, logits=o.save_logits,
                                        json=o.save_json)
    tasks = psegzoo.distributed.predict_tasks(found.images, names, wanted)
    if not o.quiet:
        _report_renames(tasks, asked, o.out_dir)
    amp = "float16" if o.half else "bfloat16" if o.bf16 else None
    return Request(o, named, overrides, ratios, download, amp, tasks, wanted, failures)


def _segmenter(request: Request, job: Any) -> Any:
    """The model (after the checks that need torch: test settings, device, precision), loaded once per
    node; a transient status line says what loading is doing."""
    o = request.o
    with StatusLine(o.quiet) as status:
        if o.onnx is not None:
            status(f"loading {o.onnx}")
            model = psegzoo.load_onnx(o.onnx, device=job.device(o.device))  # cuda:LOCAL_RANK under torchrun
            model.settings(**request.overrides)
            if request.named is not None and request.named != model.entry.name:
                raise click.UsageError(f"--model {o.name} is not the model in {o.onnx} ({model.entry.name})")
            return model
        # A bad stride, crop, scale, missing device or precision fails here, before any download.
        entry = psegzoo.get_entry(str(request.named), index=request.download.index)  # set without --onnx
        psegzoo.inference_settings(entry, **request.overrides, flip=o.flip, scales=request.ratios)
        psegzoo.autocast_dtype(request.amp, psegzoo.select_device(o.device))

        def load(first: bool) -> Any:
            # One process per node downloads and converts; the others then load from the cache, offline.
            return psegzoo.load(request.named, weights=o.weights, device=job.device(o.device), status=status,
                                download=request.download if first else request.download.with_(offline=True))

        segmenter = job.main_first(load)
        if o.use_compile:
            status("setting up torch.compile (the model compiles on the first image of each size; "
                   "inductor's cache makes that faster in later runs)")
            segmenter.compile()
        return segmenter


class _View:
    """What the job tells the terminal: a transient bar on a terminal's stderr (none elsewhere, or with
    -q) from the moment the model is loaded, stopped however the run ends; each input's line on stdout.

    A :class:`psegzoo.distributed.PredictView` by its methods (subclassing it would import torch
    when the command is defined, before the command line is checked)."""

    def __init__(self, quiet: bool, save_json: bool, compiling: bool = False):
        self.err = console(stderr=True)
        # torch.compile compiles on the first forward of each input shape, under the bar: say so
        self.description = "predicting (compiling for each new image size first)" if compiling else "predicting"
        self.enabled = not quiet and self.err.is_terminal
        self.save_json = save_json
        self.progress: Any = None
        self.bar: Any = None

    def __enter__(self) -> _View:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def started(self, total: int) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

        # The percentage moves within an image (windows, views, frames); M/N counts whole inputs.
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=self.err, transient=True)
        self.progress.start()
        self.bar = self.progress.add_task(self.description, total=total)

    def advanced(self, completed: float) -> None:
        if self.progress is not None:
            self.progress.update(self.bar, completed=completed)

    def result(self, event: Any) -> None:
        """One input's line on stdout (its JSON line, or its label map's path), or its error on stderr.

        stdout is data and always gets the path, also while a progress bar draws on stderr."""
        if not event.ok:
            self.err.print(error_line(event.error), soft_wrap=True)
            if self.save_json:
                error = event.error
                message = error.cli_message() if isinstance(error, psegzoo.PsegzooError) else str(error)
                click.echo(_json_line({"input": printable(str(event.task.path)), "error": printable(message)}))
        elif self.save_json:
            click.echo(_json_line(event.value))
        else:
            click.echo(printable(event.value["output"]))


@click.command("predict")
@click.argument("inputs", nargs=-1)
@click.option("-m", "--model", "name",
              help="Model name, alias or mmseg config name, e.g. pspnet_r18-d8_512x1024_cityscapes.")
@click.option("--sample", is_flag=True, help="Also segment the sample street scene shipped with psegzoo.")
@click.option("--onnx", type=click.Path(dir_okay=False),
              help="Run this 'psegzoo export' file with onnxruntime instead of PyTorch (the same pipeline).")
@click.option("--weights", type=click.Path(dir_okay=False), help="Local mmseg/SSSegmentation checkpoint or converted .safetensors.")
@click.option("-o", "--output", "out_dir", default="psegzoo_out", show_default=True, type=click.Path(),
              help="Output folder (never searched for inputs).")
@click.option("--overlay", is_flag=True, help="Also write <stem>_overlay.png (a video: <stem>_overlay.mp4).")
@click.option("--opacity", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True, help="Overlay opacity.")
@click.option("--color", is_flag=True, help="Also write <stem>_color.png, the colour map alone (a video: <stem>_color.mp4).")
@click.option("--probs", type=click.Choice(["png", "npy"]), is_flag=False, flag_value="png", default=None,
              help="Also write per-pixel confidence (max softmax): 16-bit PNG (default) or float32 .npy.")
@click.option("--logits", "save_logits", is_flag=True, help="Also write <stem>_logits.npy (float16, C x H x W).")
@click.option("--json", "save_json", is_flag=True,
              help="Also write <stem>.json (class areas, model, timings) and print one JSON line per input on stdout.")
@click.option("--mode", type=click.Choice(["whole", "slide"]), help="Override the checkpoint's test mode.")
@click.option("--crop-size", help="Slide window HxW (e.g. 512x1024).")
@click.option("--stride", help="Slide stride HxW (default: the checkpoint's, or 2/3 of the crop).")
@click.option("--scale", help="Test scale LONGxSHORT for the keep-ratio resize (e.g. 2048x1024).")
@click.option("--flip", is_flag=True, help="Test-time augmentation: add horizontally flipped views.")
@click.option("--scales", help="Test-time augmentation: ratios of the test scale, e.g. 0.5,0.75,1.0,1.25,1.5,1.75.")
@click.option("--device", default="auto", show_default=True,
              help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps; under torchrun, cuda means cuda:LOCAL_RANK.")
@click.option("--half", is_flag=True, help="float16 autocast (CUDA, MPS).")
@click.option("--bf16", is_flag=True, help="bfloat16 autocast (CUDA, MPS, CPU).")
@click.option("--compile", "use_compile", is_flag=True,
              help="torch.compile the model (slow first image of each size; inductor's on-disk cache speeds up "
              "later runs).")
@click.option("--batch-windows", type=click.IntRange(1, 1024),
              help="Sliding windows per forward (default: sized to free GPU memory; 2 on CPU).")
@click.option("--max-pixels", type=click.IntRange(1, None), help="Refuse larger images (decompression-bomb guard; PSEGZOO_MAX_PIXELS).")
@click.option("--batch-size", type=click.IntRange(1, 1024),
              help="Images of one resized size taken together: whole images per forward, or images whose sliding "
                   "windows share forwards (default on a GPU: sized to free memory, 4 in slide mode; 1 on CPU).")
@click.option("--workers", type=click.IntRange(0, 64),
              help="Threads reading and resizing the next images, and writing the outputs, while the model runs "
                   "(default: one per core but one beside a GPU, at most 16; none on the CPU).")
@click.option("--every", type=click.IntRange(1, None), default=1, show_default=True, metavar="K",
              help="Videos: segment every K-th frame (the output videos keep the input's duration).")
@click.option("--skip-existing", is_flag=True,
              help="Skip inputs whose requested outputs all exist (resume an interrupted job).")
@click.option("-q", "--quiet", is_flag=True,
              help="No progress bar, status lines, name mapping or summary (stdout still lists the outputs or JSON lines).")
@download_options
@index_option
@handle_errors
@as_job(prepare=prepare)
def predict_command(request: Request, job: Any) -> None:
    """Segment images and videos (files, folders, globs) and write label maps as palette PNGs.

    \b
    Examples:
      psegzoo predict --model pspnet_r18-d8_512x1024_cityscapes --sample --overlay
      psegzoo predict --model pspnet_r101-d8_cityscapes clip.mp4 --overlay
      torchrun --nproc-per-node 4 -m psegzoo predict \\
          --model pspnet_r101-d8_cityscapes photos/

    Each image gives OUT/<stem>.png (pixel value = class index); a video gives OUT/<stem>/<frame>.png
    and, with --overlay or --color, OUT/<stem>_overlay.mp4 or _color.mp4 (needs psegzoo[video]).
    Folders and globs never look inside the output folder, and no output ever replaces an input
    (a clashing name gets _2 and the mapping is printed). Under torchrun the inputs are shared out
    between the processes. A bad input is reported and skipped; the exit code is 1 if any input
    failed. With --json, stdout carries one JSON object per input. With batches (--batch-size, or
    a GPU), images of one size are taken together, so lines may come in another order.
    """
    o = request.o
    err = console(stderr=True)
    settings = psegzoo.distributed.PredictJob(
        out_dir=o.out_dir, wanted=request.wanted, opacity=o.opacity, every=o.every, skip_existing=o.skip_existing,
        batch_size=o.batch_size, workers=o.workers, max_pixels=o.max_pixels,
        options=dict(flip=o.flip, scales=request.ratios, batch_windows=o.batch_windows, amp_dtype=request.amp,
                     **request.overrides))
    with _View(o.quiet, o.save_json, compiling=o.use_compile) as view:
        totals = psegzoo.distributed.run_predict(job, request.tasks, settings, lambda: _segmenter(request, job), view=view)
    if not totals.planned:
        if not o.quiet:
            err.print(f"nothing to do: the outputs of all {totals.skipped} input(s) exist in {escape(printable(o.out_dir))}",
                      soft_wrap=True)
        sys.exit(1 if request.failures else 0)
    failures = request.failures + totals.failed
    if not o.quiet:
        err.print(f"{totals.done} image(s) written to {escape(printable(o.out_dir))}"
                  + (f", {failures} failed" if failures else "")
                  + (f", {totals.skipped} skipped (outputs exist)" if totals.skipped else ""), soft_wrap=True)
    if failures:
        sys.exit(1)
