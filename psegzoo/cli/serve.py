"""``psegzoo serve``: the zoo as an HTTP service (needs ``pip install 'psegzoo[serve]'``)."""
from __future__ import annotations

import click

import psegzoo

from .common import console, download_options, download_settings, escape, handle_errors, index_option


@click.command("serve")
@click.option("-m", "--model", "models", multiple=True, metavar="NAME",
              help="Serve this model (loaded at start; repeatable).")
@click.option("--any-model", is_flag=True,
              help="Also let requests name any manifest entry, loaded (downloaded if need be) on first use.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; set a token then).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: any free one).")
@click.option("--device", default="auto", show_default=True, help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps.")
@click.option("--half", is_flag=True, help="float16 autocast (CUDA, MPS).")
@click.option("--bf16", is_flag=True, help="bfloat16 autocast (CUDA, MPS, CPU).")
@click.option("--token", metavar="T",
              help="Every endpoint but /healthz and the page needs 'Authorization: Bearer T' (or PSEGZOO_SERVE_TOKEN).")
@click.option("--max-bytes", type=click.IntRange(1, None), default=psegzoo.serve.settings.DEFAULT_MAX_BYTES,
              show_default=True, help="Refuse larger request bodies (413, while they stream in).")
@click.option("--max-pixels", type=click.IntRange(1, None), default=psegzoo.serve.settings.DEFAULT_MAX_PIXELS,
              show_default=True, help="Refuse images with more pixels (413, before decoding).")
@click.option("--max-batch", type=click.IntRange(1, 1024), default=psegzoo.serve.settings.DEFAULT_MAX_BATCH,
              show_default=True, help="Images of one model and shape per forward.")
@click.option("--max-wait-ms", type=click.FloatRange(0, 10_000), default=psegzoo.serve.settings.DEFAULT_MAX_WAIT_MS,
              show_default=True, help="How long a request waits for others to share its forward.")
@click.option("--queue", type=click.IntRange(1, None), default=psegzoo.serve.settings.DEFAULT_QUEUE, show_default=True,
              help="Images that may wait for the model; beyond, requests get 503 with Retry-After.")
@download_options
@index_option
@handle_errors
def serve_command(models, any_model, host, port, device, half, bf16, token, max_bytes, max_pixels, max_batch,
                  max_wait_ms, queue) -> None:
    """Serve models over HTTP: POST /v1/predict, GET /v1/models, /healthz, /metrics, and a page at /.

    \b
    Examples:
      psegzoo serve --model pspnet_r18-d8_512x1024_cityscapes
      curl --data-binary @street.png -H 'Content-Type: image/png' \\
           -o labels.png 'http://127.0.0.1:8000/v1/predict'

    Stops on Ctrl-C or SIGTERM after answering the requests in flight. See docs/serve.md.
    """
    if half and bf16:
        raise click.UsageError("choose one of --half and --bf16")
    settings = psegzoo.serve.ServeSettings.from_args(
        models=models, any_model=any_model, host=host, port=port, device=device,
        amp="float16" if half else "bfloat16" if bf16 else None, token=token, max_bytes=max_bytes,
        max_pixels=max_pixels, max_batch=max_batch, max_wait_ms=max_wait_ms, queue=queue)
    err = console(stderr=True)

    def loaded(name: str) -> None:
        err.print(f"[dim]loaded {escape(name)}[/]", soft_wrap=True)

    def ready(url: str) -> None:
        click.echo(f"psegzoo serve: listening on {url} (page: {url}, API: {url}v1/predict; Ctrl-C stops)")

    psegzoo.serve.serve(settings, download=download_settings(), ready=ready, loaded=loaded)
