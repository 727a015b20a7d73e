"""``download``, ``cache``, ``verify``, ``import`` and ``convert``: getting and keeping checkpoints."""
from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator, Sequence

import click

import psegzoo

from .common import console, download_kwargs, download_options, error_line, escape, fmt_size, handle_errors, index_option

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




@click.command("download")
@click.argument("names", nargs=-1, required=True)
@download_options
@click.option("--force", is_flag=True, help="Download again even if a verified copy is cached.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@index_option
@handle_errors
def download_command(names: Sequence[str], mirrors, offline, allow_unverified, sha256, retries, timeout,
                     force: bool, quiet: bool) -> None:
    """Download and verify checkpoints into the cache (prints each cached path).

    Every file is checked against its published SHA-256 prefix before it is kept. Checkpoints that
    publish no hash need --allow-unverified (trust on first use) or --sha256 HEX.
    """
    kwargs = download_kwargs(mirrors, offline, allow_unverified, sha256, retries, timeout)
    failed = 0
    err = console(stderr=True)
    for name in names:
        try:
            entry = psegzoo.get_entry(name)
            with _not_logged(_TRUSTED_LOG):
                fetched = psegzoo.fetch(entry, progress=False if quiet else None, force=force, **kwargs)
        except psegzoo.PsegzooError as exc:
            failed += 1
            err.print(error_line(exc), soft_wrap=True)
            continue
        if fetched.newly_trusted:
            err.print(
                f"[yellow]{escape(entry.name)} publishes no hash; trusted on first use with SHA-256 "
                f"{fetched.sha256}[/] (every later use must match it)",
                soft_wrap=True,
            )
        click.echo(str(fetched.path))
    if failed:
        sys.exit(1)


@click.group("cache", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON.")
@click.pass_context
@index_option
@handle_errors
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

    out = console()
    table = Table(title=f"cache: {psegzoo.cache_root()}", title_justify="left", header_style="bold")
    for column in ("name", "file", "size", "sha256", "converted"):
        table.add_column(column, no_wrap=column in ("name", "file"))
    for i in items:
        table.add_row(escape(i.name or "?"), escape(i.file), fmt_size(i.size), (i.sha256 or "-")[:16],
                      fmt_size(i.converted_size) if i.converted else "no")
    if not out.is_terminal:
        out.width = max(out.width, 200)
    out.print(table)
    out.print(f"{len(items)} checkpoint(s), {fmt_size(total)} in total")


@cache_group.command("rm")
@click.argument("names", nargs=-1)
@click.option("--all", "remove_all", is_flag=True, help="Remove every cached checkpoint and converted file.")
@click.option("--forget-trust", is_flag=True,
              help="Also forget hashes trusted on first use (a later download may then have another hash).")
@index_option
@handle_errors
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


@click.command("verify")
@click.argument("names", nargs=-1)
@index_option
@handle_errors
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
            console().print(f"{mark}  {escape(report.name or report.file)}  {escape(detail)}", soft_wrap=True)
    if bad:
        sys.exit(1)


@click.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--name", help="Model name (default: taken from the file name).")
@click.option("--sha256", "sha256", metavar="HEX", help="Pin the SHA-256 the file must have.")
@index_option
@handle_errors
def import_command(file: str, name: str | None, sha256: str | None) -> None:
    """Put a checkpoint you already have into the cache (air-gapped or host-down use).

    The file must match the published hash. For a checkpoint that publishes none, importing it
    records its SHA-256 as trusted (or checks it against --sha256 / an earlier trust record).
    """
    entry, path = psegzoo.import_checkpoint(file, name=name, sha256=sha256)
    click.echo(f"imported {entry.name} -> {path}")


@click.command("convert")
@click.argument("source")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output .safetensors (default: the cache, or beside FILE).")
@click.option("--model", "name", help="Model name when SOURCE is a file whose name does not say it.")
@download_options
@index_option
@handle_errors
def convert_command(source: str, output: str | None, name: str | None, mirrors, offline, allow_unverified, sha256,
                    retries, timeout) -> None:
    """Convert a checkpoint (NAME or FILE) to psegzoo's safetensors format."""
    kwargs = download_kwargs(mirrors, offline, allow_unverified, sha256, retries, timeout)
    out = psegzoo.convert_checkpoint(source, output, name=name, **kwargs)
    click.echo(str(out))
