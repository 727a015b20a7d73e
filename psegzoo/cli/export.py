"""``psegzoo export``: a model as an ONNX file, checked with onnxruntime."""
from __future__ import annotations

import contextlib

import click

import psegzoo

from .common import console, download_options, download_settings, escape, handle_errors, index_option, pair_option


@click.command("export")
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output file (default: NAME.onnx, NAME in full).")
@click.option("--weights", type=click.Path(dir_okay=False), help="Local mmseg/SSSegmentation checkpoint or converted .safetensors.")
@click.option("--opset", type=int, help="ONNX opset (default: the exporter's).")
@click.option("--input-size", help="Height and width HxW of a fixed-size export (default: the training crop).")
@click.option("--static", is_flag=True, help="Fixed height and width (PSANet always is); batch stays dynamic.")
@click.option("--half", is_flag=True, help="float16 weights and compute; input and output stay float32.")
@click.option("--no-check", is_flag=True, help="Skip running the file with onnxruntime against the torch model.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the output path.")
@download_options
@index_option
@handle_errors
def export_command(name, output, weights, opset, input_size, static, half, no_check, quiet) -> None:
    """Export a model to ONNX: normalized N x 3 x H x W float32 in, N x C x H x W logits out.

    \b
    Example:
      psegzoo export pspnet_r50-d8_512x1024_80k_cityscapes -o pspnet.onnx
      psegzoo predict --onnx pspnet.onnx street.png

    Needs pip install 'psegzoo[onnx]'. Metadata in the file: classes, palette, mean/std, test settings.
    """
    size = pair_option(input_size, "--input-size")
    download = download_settings(progress=False if quiet else None)
    entry = psegzoo.get_entry(name, index=download.index)
    err = console(stderr=True)
    with err.status(f"exporting {escape(entry.name)}", spinner="dots") if not quiet and err.is_terminal else contextlib.nullcontext():
        result = psegzoo.export_onnx(entry.name, output or f"{entry.name}.onnx", weights=weights, opset=opset,
                                     input_size=size, static=True if static else None, half=half, check=not no_check,
                                     download=download)
    click.echo(str(result.path))
    if not quiet:
        err.print(escape(result.describe()), soft_wrap=True)
        for note in result.notes:
            err.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)

