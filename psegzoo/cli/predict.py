"""``psegzoo predict``: segment images and write label maps."""
from __future__ import annotations

import sys

import click

import psegzoo

from .common import (
    console,
    download_kwargs,
    download_options,
    error_line,
    escape,
    fail,
    handle_errors,
    index_option,
    pair_option,
    ratios_option,
)


@click.command("predict")
@click.argument("inputs", nargs=-1, required=True)
@click.option("-m", "--model", "name", help="Model name or alias, e.g. pspnet_r101-d8_cityscapes.")
@click.option("--onnx", type=click.Path(dir_okay=False), help="Run this 'psegzoo export' file with onnxruntime instead.")
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
@download_options
@index_option
@handle_errors
def predict_command(inputs, name, onnx, weights, out_dir, overlay, opacity, color, probs, save_logits, save_json, mode,
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
    overrides = dict(mode=mode, crop_size=pair_option(crop_size, "--crop-size"), stride=pair_option(stride, "--stride"),
                     scale=pair_option(scale, "--scale"))
    ratios = ratios_option(scales)
    if onnx is not None:
        if weights or use_compile or half or bf16:
            raise click.UsageError("--weights, --compile, --half and --bf16 do not apply to --onnx (fixed at export)")
        onnx_model = psegzoo.load_onnx(onnx, device=device)
        onnx_model.settings(**overrides)
        entry = onnx_model.entry
        if name is not None and psegzoo.get_entry(name).name != entry.name:
            raise click.UsageError(f"--model {name} is not the model in {onnx} ({entry.name})")
    elif name is None:
        raise click.UsageError("give the model with --model NAME (or an exported file with --onnx FILE)")
    else:
        entry = psegzoo.get_entry(name)
    # Check the settings before any download, so a bad stride fails at once.
    psegzoo.inference_settings(entry, **overrides)
    found = psegzoo.find_images(inputs, exclude=[out_dir])
    err = console(stderr=True)
    failures = 0
    for problem in found.errors:
        failures += 1
        err.print(error_line(problem), soft_wrap=True)
    if not found.images:
        fail("no images to predict" + ("" if found.errors else f" in {', '.join(inputs)}"))
    segmenter = onnx_model if onnx is not None else psegzoo.load(
        entry.name, weights=weights, device=device,
        **download_kwargs(mirrors, offline, allow_unverified, sha256, retries, timeout),
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
                err.print(error_line(exc), soft_wrap=True)
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
        err.print(f"{written} image(s) written to {escape(out_dir)}" + (f", {failures} failed" if failures else ""),
                  soft_wrap=True)
    if failures:
        sys.exit(1)
