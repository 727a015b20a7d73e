"""The merged manifest: the built-in ``model_index.json`` plus extra ones (``PSEGZOO_INDEX`` or an
explicit ``index``), cached per file state, and the lookups on it."""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .. import files
from ..errors import ManifestError, option
from ..settings import index_from_env
from .entries import INDEX_ENV, MAX_MANIFEST_BYTES, Dataset, Entry, Resolution
from .names import _filter, _Lookup, _resolve, close_names
from .schema import check_weights_files, parse_manifest


@dataclass(frozen=True)
class Manifest:
    """The merged manifest: entries in file order and datasets by id."""

    models: tuple[Entry, ...]
    datasets: Mapping[str, Dataset] = field(default_factory=dict)
    sources: tuple[str, ...] = ()

    def names(self) -> list[str]:
        return [e.name for e in self.models]

    def by_name(self) -> dict[str, Entry]:
        return {e.name: e for e in self.models}

    @cached_property
    def _lookup(self) -> _Lookup:
        return _Lookup.of(self.models)

    def dataset(self, dataset_id: str) -> Dataset:
        try:
            return self.datasets[dataset_id]
        except KeyError:
            raise ManifestError(
                f"dataset {dataset_id!r} is not described in the manifest; "
                f"known datasets: {', '.join(sorted(self.datasets))}"
            ) from None

    def resolve(self, name: str) -> Resolution:
        return _resolve(self, name)

    def get(self, name: str) -> Entry:
        return _resolve(self, name).entry

    def close_names(self, text: str, n: int = 5, *, aliases: bool = True) -> list[str]:
        """Names (and short aliases) that look like ``text``: what to suggest when nothing matched it."""
        return close_names(self, text, n, aliases=aliases)

    def filter(
        self,
        pattern: str | None = None,
        *,
        dataset: str | None = None,
        method: str | None = None,
        backbone: str | None = None,
    ) -> list[Entry]:
        return _filter(self, pattern, dataset=dataset, method=method, backbone=backbone)




def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows; numbers must be finite")


def _read_json(path: Path) -> Any:
    """The JSON document in ``path``: strict UTF-8, no NaN/Infinity, bounded size and depth."""
    where = f"manifest file {str(path)!r}"
    try:
        with files.open_regular(path) as f:  # a FIFO or device given as --index must not hang or never end
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise ManifestError(f"{where} does not exist (check {INDEX_ENV} or {option('index=', '--index')})") from None
    except IsADirectoryError:
        raise ManifestError(f"{where} is a directory, not a JSON file") from None
    except files.NotRegularFileError:
        raise ManifestError(f"{where} is a FIFO, socket or device, not a JSON file") from None
    except OSError as exc:
        raise ManifestError(f"{where} cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{where} is larger than {MAX_MANIFEST_BYTES // 10**6} MB; a manifest is far smaller")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{where} is not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r})") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{where} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ManifestError(f"{where} nests arrays or objects too deeply to be a manifest") from None
    except ValueError as exc:  # NaN/Infinity, or an integer past Python's digit limit
        raise ManifestError(f"{where} holds a number psegzoo refuses: {str(exc).splitlines()[0]}") from None


def builtin_index_path() -> Path:
    """The ``model_index.json`` that ships inside the package."""
    return Path(str(resources.files("psegzoo").joinpath("model_index.json")))


def extra_index_paths(extra: str | os.PathLike | Iterable[str | os.PathLike] | None = None) -> tuple[Path, ...]:
    """Extra manifests: those given explicitly, else ``PSEGZOO_INDEX`` (os.pathsep-separated)."""
    if extra is None:
        return index_from_env()
    if isinstance(extra, (str, os.PathLike)):
        return (Path(extra),)
    return tuple(Path(p) for p in extra)


def _stamp(path: Path) -> tuple[str, float, int]:
    try:
        st = path.stat()
        return (str(path.resolve()), st.st_mtime, st.st_size)
    except OSError:
        return (str(path), -1.0, -1)


@lru_cache(maxsize=8)
def _load_cached(stamps: tuple[tuple[str, float, int], ...]) -> Manifest:
    builtin = builtin_index_path()
    entries, datasets = parse_manifest(_read_json(builtin), builtin.name, builtin=True)
    merged: dict[str, Entry] = {e.name.lower(): e for e in entries}
    for path_str, _, _ in stamps[1:]:
        path = Path(path_str)
        extra_entries, extra_datasets = parse_manifest(_read_json(path), str(path))
        datasets.update(extra_datasets)
        for e in extra_entries:
            merged[e.name.lower()] = e  # names are case-insensitive: an extra entry replaces any spelling
    for e in merged.values():
        if e.dataset not in datasets:
            raise ManifestError(
                f"model {e.name!r} names dataset {e.dataset!r}, which no manifest describes; "
                f"known: {', '.join(sorted(datasets))}"
            )
        n = len(datasets[e.dataset].classes)
        if n != e.architecture.num_classes:
            raise ManifestError(
                f"model {e.name!r} has num_classes={e.architecture.num_classes} but dataset "
                f"{e.dataset!r} has {n} classes"
            )
    check_weights_files(merged.values())
    return Manifest(models=tuple(merged.values()), datasets=datasets, sources=tuple(s[0] for s in stamps))


def load_manifest(extra: str | os.PathLike | Iterable[str | os.PathLike] | None = None) -> Manifest:
    """The built-in manifest merged with extra ones (explicit, else ``PSEGZOO_INDEX``)."""
    paths = (builtin_index_path(),) + extra_index_paths(extra)
    return _load_cached(tuple(_stamp(p) for p in paths))






def list_models(
    pattern: str | None = None,
    *,
    dataset: str | None = None,
    method: str | None = None,
    backbone: str | None = None,
    index: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
) -> list[Entry]:
    """Entries matching a shell-style ``pattern`` on names and the given filters, in manifest order."""
    return load_manifest(index).filter(pattern, dataset=dataset, method=method, backbone=backbone)


def get_entry(name: str, *, index: str | os.PathLike | Iterable[str | os.PathLike] | None = None) -> Entry:
    """The entry a canonical name, published file name or short alias resolves to."""
    return load_manifest(index).get(name)


def resolve(name: str, *, index: str | os.PathLike | Iterable[str | os.PathLike] | None = None) -> Resolution:
    """Like :func:`get_entry`, also telling whether ``name`` was an alias and its alternatives."""
    return load_manifest(index).resolve(name)


def get_dataset(dataset_id: str, *, index: str | os.PathLike | Iterable[str | os.PathLike] | None = None) -> Dataset:
    return load_manifest(index).dataset(dataset_id)
