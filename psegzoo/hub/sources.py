"""Where a checkpoint may come from, in the order psegzoo tries them.

1. Copies already on this machine: the entry's published file name in torch hub's checkpoint
   folder (``$TORCH_HOME/hub/checkpoints``, where mmengine's ``load_checkpoint(url)`` saved it),
   mim's download folder (``~/.cache/mim``), and every ``search`` folder with its subfolders.
2. Mirrors, in the order given. A mirror is a URL template: ``{path}`` (the original URL's path),
   ``{file}`` (the published file name) and ``{name}`` (the entry name) are substituted; with no
   placeholder the original path is appended (``<mirror>/<path>``). ``file://`` works too.
   ``hf://ORG/REPO[@REVISION][/SUBFOLDER]`` is a Hugging Face Hub repository holding the files flat.
3. The original URL, then the alternatives the manifest lists (``weights.urls``).
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from ..errors import DownloadError, option
from ..manifest import Entry
from .layout import weights_of
from .redact import redact_url
from .settings import DownloadOptions

_PLACEHOLDER = re.compile(r"\{(path|file|name)\}")
_HF = re.compile(r"hf://(?P<org>[^/@]+)/(?P<repo>[^/@]+)(?:@(?P<rev>[^/]+))?(?P<sub>(?:/[^/]+)*)/?")
_MAX_WALK = 100_000  # directory entries looked at per search folder: a mistaken $HOME stays bounded


def url_path(entry: Entry) -> str:
    """The original URL's path without the leading slash: the layout of a mirror and of ``mirror DIR``."""
    w = weights_of(entry)
    path = unquote(urlsplit(w.url).path).lstrip("/")
    return path or w.file


def hf_url(spec: str, file: str, endpoint: str) -> str:
    """``hf://ORG/REPO[@REV][/SUB]`` -> ``{endpoint}/ORG/REPO/resolve/{REV or main}/[SUB/]{file}``."""
    m = _HF.fullmatch(spec)
    if not m:
        raise DownloadError(
            f"mirror {redact_url(spec)!r} is not hf://ORG/REPO[@REVISION][/SUBFOLDER] (check {option('mirrors=', '--mirror')})"
        )
    revision = quote(unquote(m.group("rev") or "main"), safe="")
    sub = m.group("sub").strip("/")
    return f"{endpoint}/{m.group('org')}/{m.group('repo')}/resolve/{revision}/" + (f"{sub}/" if sub else "") + quote(file)


def mirror_url(template: str, entry: Entry, endpoint: str) -> str:
    """The URL a mirror template gives for ``entry``."""
    w = weights_of(entry)
    if template.lower().startswith("hf://"):
        return hf_url(template, w.file, endpoint)
    values = {"path": quote(url_path(entry)), "file": quote(w.file), "name": quote(entry.name)}
    if _PLACEHOLDER.search(template):
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)
    return template.rstrip("/") + "/" + values["path"]


def candidate_urls(entry: Entry, options: DownloadOptions) -> list[str]:
    """Every URL tried for ``entry``, in order: mirrors, the original, the manifest's alternatives."""
    w = weights_of(entry)
    urls = [mirror_url(m, entry, options.hf_endpoint) for m in options.mirrors]
    urls.append(w.url)
    urls += list(w.urls)
    return list(dict.fromkeys(urls))


def auth_headers(url: str, options: DownloadOptions) -> dict[str, str]:
    """``Authorization: Bearer $HF_TOKEN`` for the Hugging Face endpoint only (never for other hosts)."""
    if not options.hf_token:
        return {}
    a, b = urlsplit(url), urlsplit(options.hf_endpoint)
    if (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port):
        return {"Authorization": f"Bearer {options.hf_token}"}
    return {}


def local_path(url: str) -> Path:
    """The path of a ``file://`` URL (a DownloadError for a remote host)."""
    from urllib.request import url2pathname  # brings http.client and ssl: only when a file:// URL is used

    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise DownloadError(f"file:// URL with host {redact_url(parts.netloc)!r} is not supported: {redact_url(url)}")
    return Path(url2pathname(unquote(parts.path)))


# --------------------------------------------------------------------------------------------
# Copies already on this machine
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchFolder:
    path: Path
    recursive: bool
    why: str  # "torch hub", "mim", "search path"


def search_folders(options: DownloadOptions) -> list[SearchFolder]:
    """torch hub's and mim's download folders (flat), then the search folders (with subfolders)."""
    out = [
        SearchFolder(options.torch_home / "hub" / "checkpoints", False, "torch hub's checkpoint folder"),
        SearchFolder(options.mim_dir, False, "mim's download folder"),
    ]
    out += [SearchFolder(p, True, "search folder") for p in options.search]
    return out


def _walk_for(folder: Path, want: str) -> Iterator[Path]:
    """Files named ``want`` under ``folder``, never following links to folders (no loops), bounded."""
    seen = 0
    for root, dirs, names in os.walk(folder, followlinks=False, onerror=lambda _e: None):
        dirs.sort()
        seen += len(names) + len(dirs)
        if want in names:
            yield Path(root) / want
        if seen > _MAX_WALK:
            return


def find_local_copies(entry: Entry, options: DownloadOptions) -> list[tuple[Path, str]]:
    """Files named like ``entry``'s published file in the search folders: ``(path, where found)``."""
    want = weights_of(entry).file
    found: list[tuple[Path, str]] = []
    seen: set[str] = set()
    for folder in search_folders(options):
        paths = _walk_for(folder.path, want) if folder.recursive else iter([folder.path / want])
        for path in paths:
            try:
                if not path.is_file():
                    continue
                real = str(path.resolve())
            except OSError:
                continue
            if real not in seen:
                seen.add(real)
                found.append((path, folder.why))
    return found
