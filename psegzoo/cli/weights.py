"""``download``, ``cache``, ``verify``, ``import``, ``mirror`` and ``convert``: getting and keeping checkpoints.

Everything shown comes from return values (paths, hashes, results); what the library logs while it
works (retries, files found) is printed once by the group's log handler.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import click

import psegzoo

from .common import (
    console,
    download_options,
    download_settings,
    error_line,
    escape,
    fmt_size,
    handle_errors,
    index_option,
    printable,
    quiet,
)
from .listing import terminal_width
from .tables import Col, Fitted, fit


def _trusted_notice(name: str, sha256: str, origin: str | None) -> str:
    where = f" from {escape(origin)}" if origin else ""
    return (f"[yellow]{escape(name)} publishes no hash; trusted on first use with SHA-256 {sha256}{where}[/] "
            "(every later use must match it)")


@click.command("download")
@click.argument("names", nargs=-1, required=True)
@download_options
@click.option("--force", is_flag=True, help="Download again even if a verified copy is cached (kept until the new one verifies).")
@click.option("--link", is_flag=True, help="Hard-link copies found on this machine into the cache instead of copying.")
@click.option("-q", "--quiet", "no_bar", is_flag=True, help="No progress bar.")
@index_option
@handle_errors
def download_command(names: Sequence[str], force: bool, link: bool, no_bar: bool) -> None:
    """Get and verify checkpoints into the cache (prints each cached path).

    Looks first for copies already on this machine (torch hub's and mim's download folders,
    --search folders), then tries the mirrors, the original URL and its alternatives. Every file is
    checked against its published SHA-256 before it is kept. Checkpoints that publish no hash need
    --allow-unverified (trust on first use) or --sha256 HEX.
    """
    options = download_settings(force=force or None, link=link or None, progress=False if no_bar else None)
    failed = 0
    err = console(stderr=True)
    for name in names:
        try:
            entry = psegzoo.get_entry(name, index=options.index)
            fetched = psegzoo.fetch(entry, options)
        except psegzoo.PsegzooError as exc:
            failed += 1
            err.print(error_line(exc), soft_wrap=True)
            continue
        if fetched.newly_trusted:
            err.print(_trusted_notice(entry.name, fetched.sha256, fetched.url), soft_wrap=True)
        elif fetched.source == "local" and not quiet():
            err.print(f"{escape(entry.name)}: verified copy found at {escape(fetched.url or '')}", soft_wrap=True)
        click.echo(str(fetched.path))
    if failed:
        sys.exit(1)


@click.group("cache", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON (full SHA-256 of every file).")
@click.pass_context
@index_option
@handle_errors
def cache_group(ctx: click.Context, as_json: bool) -> None:
    """List cached checkpoints (name, size, SHA-256, trust level, converted); 'cache rm' removes them."""
    if ctx.invoked_subcommand is not None:
        return
    options = download_settings()
    items = psegzoo.cached(options)
    total = sum(i.total_size for i in items)
    if as_json:
        rows = [{"name": i.name, "file": i.file, "path": str(i.path), "complete": i.complete, "size": i.size,
                 "sha256": i.sha256, "converted": i.converted, "converted_size": i.converted_size,
                 "converted_sha256": i.converted_sha256, "partial_size": i.partial_size, "url": i.url,
                 "source": i.source, "at": i.at, "trusted": i.trusted, "trust": i.trust} for i in items]
        click.echo(json.dumps({"root": str(options.home), "total_bytes": total, "checkpoints": rows}, indent=1))
        return
    width = terminal_width()
    _print_table(f"cache: {printable(str(options.home))}", _cache_table(items, width), width, "--json")
    click.echo(f"{sum(i.complete for i in items)} checkpoint(s), {fmt_size(total)} in total")


def _cache_row(i: psegzoo.CachedCheckpoint) -> tuple[str, ...]:
    return (printable(i.name), fmt_size(i.size) if i.complete else "-",
            fmt_size(i.partial_size) if i.partial_size else "", (i.sha256 or "-")[:16], i.trust or "-",
            fmt_size(i.converted_size) if i.converted else "no")


def _cache_table(items: Sequence[psegzoo.CachedCheckpoint], width: int | None) -> Fitted:
    """The cache listing fitted to ``width``; the unfinished column only when a download is unfinished."""
    columns = [c for c in CACHE_COLUMNS if c.header != "unfinished" or any(i.partial_size for i in items)]
    rows = [tuple(cell for c, cell in zip(CACHE_COLUMNS, _cache_row(i)) if c in columns) for i in items]
    return fit(columns, rows, width)


# name and size are never left out; the hash prefix, the converted size, the trust level and an unfinished
# download's size are, in that order (the unfinished column is there only when a download is unfinished)
CACHE_COLUMNS = (Col("name", fold=True), Col("size", right=True), Col("unfinished", 1, right=True),
                 Col("sha256", 4), Col("trust", 2), Col("converted", 3, right=True))
# the file folds at a path separator; the model's name (read from the file's name) is left out first
IMPORT_COLUMNS = (Col("file", fold=True), Col("model", priority=1), Col("result"))


def _print_table(title: str, table: Fitted, width: int | None, where: str) -> None:
    """The title (naming the columns left out, and where they are), the bold header, the rows."""
    if table.hidden:
        hint = f" ({', '.join(c.header for c in table.hidden)} left out to fit; {where} shows them)"
        title += hint if width is None or len(title + hint) <= width else f"\n{hint.strip()}"
    header, *rows = table.lines
    click.echo("\n".join([title, click.style(header, bold=True), *rows]))


def _trust_cell(trust: str | None) -> str:
    """The trust level, in yellow when only a hash prefix vouches for the file."""
    if trust is None:
        return "-"
    return f"[yellow]{escape(trust)}[/]" if trust == "prefix-only" else escape(trust)


@cache_group.command("rm")
@click.argument("names", nargs=-1)
@click.option("--all", "remove_all", is_flag=True, help="Remove every cached checkpoint, converted file and unfinished download.")
@click.option("--forget-trust", is_flag=True,
              help="Also forget recorded hashes (trusted on first use, or learned from the origin over HTTPS); a later "
                   "download may then have another hash.")
@index_option
@handle_errors
def cache_rm_command(names: Sequence[str], remove_all: bool, forget_trust: bool) -> None:
    """Remove cached checkpoints by name (or --all); files another process is writing are left alone."""
    if not names and not remove_all:
        raise click.UsageError("give one or more model names, or --all")
    options = download_settings()
    if remove_all:
        removed = psegzoo.remove(options=options, all=True, forget_trust=forget_trust)
    else:
        removed = []
        for name in names:
            removed += psegzoo.remove(psegzoo.get_entry(name, index=options.index), options=options,
                                      forget_trust=forget_trust)
    for path in removed:
        click.echo(f"removed {path}")
    if not removed:
        click.echo("nothing to remove")


HASHES_HEADER = ("# psegzoo verify --hashes: the full SHA-256 of each cached checkpoint, hashed now, in sha256sum "
                 "format ('sha256sum -c' and PSEGZOO_HASHES read it). Each '#' line says the file's trust level and "
                 "where it came from; pinned and origin-https hashes are the ones worth contributing.")


def _hashes_lines(report: psegzoo.VerifyResult) -> list[str]:
    """A comment saying where the file came from, then its ``sha256sum`` line."""
    where = report.url or "an unrecorded source"
    comment = f"# {report.name}: {report.trust or 'trust not recorded'}, from {where}"
    return [printable(comment).replace("\n", " "), f"{report.sha256}  {printable(str(report.path))}"]


def _verify_line(report: psegzoo.VerifyResult) -> str:
    """One line per cached checkpoint: ok with its hash, trust level and origin, or what is wrong."""
    if report.status != "ok":
        detail = report.problem or ""
        if report.removed:
            detail += " (deleted; it will be got again on next use)"
        return f"[bold red]{report.status}[/]  {escape(report.name)}  {escape(detail)}"
    line = f"[green]ok[/]  {escape(report.name)}  sha256 {report.sha256}  ({_trust_cell(report.trust)}"
    line += f" from {escape(report.url)})" if report.url else ")"
    if report.converted_status == "ok":
        line += "  (converted weights ok)"
    elif report.converted_status is not None:
        line += (f"  [bold red]converted weights {report.converted_status}[/]: {escape(report.converted_problem or '')}"
                 " (deleted; converted again on next use)")
    return line


@click.command("verify")
@click.argument("names", nargs=-1)
@click.option("--hashes", "as_hashes", is_flag=True,
              help="Print the full SHA-256 of the cached checkpoints in sha256sum format, each after a '#' line saying "
                   "its trust level and where it came from (problems go to stderr).")
@index_option
@handle_errors
def verify_command(names: Sequence[str], as_hashes: bool) -> None:
    """Re-hash cached checkpoints and converted weights against their records; bad files are deleted.

    Each line shows the trust level the file came in with: pinned (a full SHA-256 known beforehand),
    origin-https (from its origin over verified HTTPS; its hash is now pinned), prefix-only (a third
    party that only the 8-digit hash prefix vouches for), first-use (trusted on first use).
    """
    options = download_settings()
    targets: list[psegzoo.Entry | None] = [psegzoo.get_entry(n, index=options.index) for n in names]
    reports = [report for target in targets or [None] for report in psegzoo.verify(target, options=options, full=True)]
    out, err = console(), console(stderr=True)
    if as_hashes:
        click.echo(HASHES_HEADER)
    if not reports:  # only with no NAMEs: a named checkpoint that is not cached gets a 'missing' line
        (err if as_hashes else out).print(f"nothing to verify: the cache ({escape(str(options.home))}) holds no "
                                          "checkpoint", soft_wrap=True)
    for report in reports:
        if as_hashes and report.status == "ok":
            click.echo("\n".join(_hashes_lines(report)))
        else:  # with --hashes, problems go to stderr: stdout stays a sha256sum list
            (err if as_hashes else out).print(_verify_line(report), soft_wrap=True)
    if any(not report.ok for report in reports):
        sys.exit(1)



@click.command("import")
@click.argument("path", type=click.Path(exists=False))
@click.option("--name", help="Model name (default: recognised from the file name or its hash). FILE only.")
@click.option("--sha256", "sha256", metavar="HEX", help="Pin the SHA-256 the file must have. FILE only.")
@click.option("--link", is_flag=True, help="Hard-link into the cache instead of copying (same file system).")
@click.option("--strict", is_flag=True, default=None,
              help="Refuse a file that only the published 8-digit hash prefix vouches for (also PSEGZOO_STRICT=1).")
@index_option
@handle_errors
def import_command(path: str, name: str | None, sha256: str | None, link: bool, strict: bool | None) -> None:
    """Put checkpoints you already have into the cache: one FILE, or every one under DIR.

    Each file must match the published hash. For a checkpoint that publishes none, importing it
    records its SHA-256 as trusted (or checks it against --sha256 / an earlier trust record). A
    folder is searched with its subfolders; every file gets a line in the result table, and files
    that are not checkpoints of the zoo are listed, never fatal (exit 1 if a checkpoint was refused).
    """
    options = download_settings(sha256=sha256, link=link or None, strict=strict or None)
    source = Path(path)
    if not source.is_dir():
        _import_file(source, name, options)
        return
    if name or sha256:
        raise click.UsageError("--name and --sha256 apply to one FILE, not to a folder")
    _import_folder(source, options)


def _import_file(source: Path, name: str | None, options: psegzoo.DownloadOptions) -> None:
    result = psegzoo.import_checkpoint(source, name=name, options=options)
    if result.newly_trusted and result.name and result.sha256:
        console(stderr=True).print(_trusted_notice(result.name, result.sha256, str(source)), soft_wrap=True)
    verb = "already cached:" if result.status == "already cached" else "imported"
    click.echo(f"{verb} {result.name} -> {result.path}")


def _import_folder(source: Path, options: psegzoo.DownloadOptions) -> None:
    """Import every checkpoint under ``source``: a table of results, then why each refused one was."""
    results = psegzoo.import_folder(source, options)
    rows = [(printable(str(r.source.relative_to(source))), r.name or "-", r.status) for r in results]
    width = terminal_width()
    _print_table(f"import {printable(str(source))}", fit(IMPORT_COLUMNS, rows, width), width,
                 "'psegzoo cache' or a wider terminal")
    err = console(stderr=True)
    for r in results:
        if r.error is not None:  # why a checkpoint was refused, one whole line each
            err.print(f"[bold red]{r.status}:[/] {escape(str(r.source.relative_to(source)))}: "
                      f"{escape(r.error.cli_message())}", soft_wrap=True)
    counts = {s: sum(r.status == s for r in results) for s in ("imported", "already cached", "hash mismatch",
                                                                  "refused", "not a zoo file", "unreadable")}
    click.echo(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no files")
    if counts["hash mismatch"] or counts["refused"] or counts["unreadable"]:
        sys.exit(1)


@click.command("mirror")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("names", nargs=-1)
@click.option("--link", is_flag=True,
              help="Hard-link the cache's files instead of copying them (same file system); whoever can write DIR "
                   "can then change the cached files.")
@click.option("--copy", is_flag=True, hidden=True, help="Copy the files (the default).")
@index_option
@handle_errors
def mirror_command(directory: str, names: Sequence[str], link: bool, copy: bool) -> None:
    """Write verified cached checkpoints (NAMEs, or all) into DIR in their original URL layout, with
    DIR/SHA256SUMS. Serve DIR with any static HTTP server and pass its URL to --mirror."""
    options = download_settings()
    if link and copy:
        raise click.UsageError("--link and --copy contradict each other; give one")
    results = psegzoo.mirror(directory, list(names) or None, options=options, link=link)
    err = console(stderr=True)
    for r in results:
        if r.path is not None:
            click.echo(f"{r.status} {r.name} -> {r.path}")
        else:
            err.print(f"[bold red]{r.status}[/]  {escape(r.name)}  {escape(r.detail or '')}", soft_wrap=True)
    written = sum(r.path is not None for r in results)
    err.print(f"{written} checkpoint(s) in {escape(directory)} (serve it, e.g. 'python -m http.server -d {escape(directory)}', "
              "and pass its URL to --mirror)", soft_wrap=True)
    if written != len(results):
        sys.exit(1)


@click.command("convert")
@click.argument("source")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output .safetensors (default: the cache, or beside FILE).")
@click.option("--model", "name", help="Model name when SOURCE is a file whose name does not say it.")
@download_options
@index_option
@handle_errors
def convert_command(source: str, output: str | None, name: str | None) -> None:
    """Convert a checkpoint (NAME or FILE) to psegzoo's safetensors format.

    For a NAME whose converted weights are already cached and verify, returns at once.
    """
    options = download_settings()
    if output is None and name is None and not Path(source).is_file():
        ready = psegzoo.converted_file(psegzoo.get_entry(source, index=options.index), options)
        if ready is not None:  # nothing to do, and no need to start torch
            click.echo(str(ready))
            return
    out = psegzoo.convert_checkpoint(source, output, name=name, download=options)
    click.echo(str(out))
