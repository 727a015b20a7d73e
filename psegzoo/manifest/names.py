"""Names people type: canonical names, published file names, mmseg 1.x config names and short
aliases, case-insensitive; dataset spellings."""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UnknownModelError, option
from .entries import Entry, Resolution

if TYPE_CHECKING:
    from .index import Manifest

# Common spellings of dataset ids, all lower case; a dataset id always maps to itself.
DATASET_ALIASES: Mapping[str, str] = {
    "ade": "ade20k",
    "ade20k": "ade20k",
    "ade-20k": "ade20k",
    "ade_20k": "ade20k",
    "cityscapes": "cityscapes",
    "city": "cityscapes",
    "voc": "voc12aug",
    "voc12": "voc12aug",
    "voc2012": "voc12aug",
    "voc12aug": "voc12aug",
    "pascal_voc": "voc12aug",
    "pascal-voc": "voc12aug",
    "pascalvoc": "voc12aug",
    "pascal_context": "pascal_context",
    "pascal-context": "pascal_context",
    "context": "pascal_context",
    "pascal_context_59": "pascal_context_59",
    "pascal-context-59": "pascal_context_59",
    "context59": "pascal_context_59",
    "coco-stuff10k": "coco-stuff10k",
    "coco_stuff10k": "coco-stuff10k",
    "cocostuff10k": "coco-stuff10k",
    "coco-stuff164k": "coco-stuff164k",
    "coco_stuff164k": "coco-stuff164k",
    "cocostuff164k": "coco-stuff164k",
}
# Dataset words that may end a model name besides the dataset id itself.
_NAME_DATASET_SUFFIXES: Mapping[str, tuple[str, ...]] = {"voc12aug": ("voc12aug", "voc")}






def normalize_dataset(value: str, known: Iterable[str] | None = None) -> str:
    """Map a user's spelling (``ADE20K``, ``ade``, ``pascal_voc``) to a dataset id."""
    key = value.strip().lower()
    known_set = set(known) if known is not None else set(DATASET_ALIASES.values())
    if key in known_set:
        return key
    if key in DATASET_ALIASES:
        return DATASET_ALIASES[key]
    options = sorted(known_set)
    raise UnknownModelError(f"unknown dataset {value!r}; choose one of: {', '.join(options)}")


def _dataset_spellings(dataset_id: str) -> tuple[str, ...]:
    """Every spelling of a dataset a name may end with: the id, its aliases, the published suffixes."""
    spellings = [dataset_id, *_NAME_DATASET_SUFFIXES.get(dataset_id, ())]
    spellings += sorted(k for k, v in DATASET_ALIASES.items() if v == dataset_id)
    return tuple(dict.fromkeys(spellings))


def _name_parts(entry: Entry) -> tuple[str, str, tuple[str, ...], frozenset[str]] | None:
    """(method token, backbone token, dataset suffix tokens, middle tokens) of a canonical name, lower case."""
    tokens = entry.name.lower().split("_")
    if len(tokens) < 3:
        return None
    for suffix in _NAME_DATASET_SUFFIXES.get(entry.dataset, (entry.dataset,)):
        tail = tuple(suffix.split("_"))
        if len(tokens) >= 2 + len(tail) and tuple(tokens[-len(tail):]) == tail:
            return tokens[0], tokens[1], tail, frozenset(tokens[2 : len(tokens) - len(tail)])
    return None


def _rank_key(entry: Entry) -> tuple[float, int, str]:
    miou = entry.miou if entry.miou is not None else float("-inf")
    schedule = entry.schedule if isinstance(entry.schedule, int) else 0
    return (miou, schedule, entry.name)


def short_name(entry: Entry) -> str | None:
    """The ``<method>_<backbone>_<dataset>`` form of an entry's name."""
    parts = _name_parts(entry)
    if parts is None:
        return None
    return "_".join((parts[0], parts[1]) + parts[2])


@dataclass(frozen=True)
class _Lookup:
    """Lower-case indexes of one manifest: names, published files, mmseg 1.x configs, alias parts."""

    names: Mapping[str, Entry]
    files: Mapping[str, Entry]
    configs: Mapping[str, tuple[Entry, ...]]
    parts: tuple[tuple[Entry, str, str, frozenset[str], tuple[tuple[str, ...], ...]], ...]

    @classmethod
    def of(cls, models: Sequence[Entry]) -> _Lookup:
        names = {e.name.lower(): e for e in models}
        files = {e.weights.file.lower(): e for e in models if e.weights is not None}
        configs: dict[str, list[Entry]] = {}
        for e in models:
            if e.config:
                configs.setdefault(e.config.lower(), []).append(e)
        parts = []
        for e in models:
            found = _name_parts(e)
            if found is not None:
                method, backbone, _tail, middle = found
                tails = tuple(tuple(s.split("_")) for s in _dataset_spellings(e.dataset))
                parts.append((e, method, backbone, middle, tails))
        return cls(names, files, {k: tuple(v) for k, v in configs.items()}, tuple(parts))

    def aliases(self, query: str) -> list[Entry]:
        q = query.split("_")
        found = []
        for entry, method, backbone, middle, tails in self.parts:
            if len(q) < 3 or q[0] != method or q[1] != backbone:
                continue
            for tail in tails:
                if len(q) >= 2 + len(tail) and tuple(q[len(q) - len(tail):]) == tail and set(q[2 : len(q) - len(tail)]) <= middle:
                    found.append(entry)
                    break
        return found


_LIST_HINT = option("psegzoo.list_models()", "'psegzoo list'")


def _config_key(query: str) -> str:
    """``configs/pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py`` -> the config name."""
    key = query.replace("\\", "/").rsplit("/", 1)[-1]
    return key[: -len(".py")] if key.endswith(".py") else key


def _resolve(manifest: Manifest, name: str) -> Resolution:
    if not isinstance(name, str) or not name.strip():
        raise UnknownModelError(f"empty model name; {_LIST_HINT} lists the available models")
    lookup = manifest._lookup
    key = name.strip().lower()
    stem = key[: -len(".pth")] if key.endswith(".pth") else key
    if stem in lookup.names:
        return Resolution(query=name, entry=lookup.names[stem], is_alias=False)
    # A published file name with its _YYYYMMDD_HHMMSS-hash tail resolves to its entry too.
    for file in (key, stem + ".pth", stem):
        if file in lookup.files:
            return Resolution(query=name, entry=lookup.files[file], is_alias=False)
    # An mmseg 1.x config name (what MMSegInferencer takes), with or without its folder and .py.
    configs = lookup.configs.get(_config_key(key), ())
    if configs:
        return Resolution(query=name, entry=configs[0], is_alias=False, alternatives=configs[1:])
    matches = lookup.aliases(stem)
    if matches:
        ranked = sorted(matches, key=_rank_key, reverse=True)
        return Resolution(query=name, entry=ranked[0], is_alias=True, alternatives=tuple(ranked[1:]))
    close = close_names(manifest, stem)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}.{hint} {_LIST_HINT} lists all {len(lookup.names)} models."
    )


def close_names(manifest: Manifest, text: str, n: int = 5, *, aliases: bool = True) -> list[str]:
    """Up to ``n`` names (and short aliases, with ``aliases``) that look like ``text`` (what a user meant by a
    typo): the closest by spelling, else those sharing its first word. Wildcards in ``text`` are ignored."""
    stem = "".join(ch for ch in text.strip().lower() if ch not in "*?[]")
    if not stem:
        return []
    shorts = (s for s in (short_name(e) for e in manifest.models) if s) if aliases else ()
    candidates = sorted({*manifest._lookup.names, *shorts})
    close = difflib.get_close_matches(stem, candidates, n=n, cutoff=0.6)
    if not close:
        prefix = stem.split("_")[0]
        close = [c for c in candidates if c.startswith(prefix)][:n]
    return close


def _filter(
    manifest: Manifest,
    pattern: str | None,
    *,
    dataset: str | None,
    method: str | None,
    backbone: str | None,
) -> list[Entry]:
    entries = list(manifest.models)
    if dataset:
        ds = normalize_dataset(dataset, manifest.datasets)
        entries = [e for e in entries if e.dataset == ds]
    if method:
        m = method.strip().lower()
        valid = sorted({e.method for e in manifest.models})
        if m not in {v.lower() for v in valid}:
            raise UnknownModelError(f"unknown method {method!r}; choose one of: {', '.join(valid)}")
        entries = [e for e in entries if e.method.lower() == m]
    if backbone:
        b = backbone.strip().lower()
        entries = [e for e in entries if e.backbone.lower() == b or fnmatch.fnmatchcase(e.backbone.lower(), b)]
    if pattern:
        p = pattern.strip().lower()
        p = p if any(ch in p for ch in "*?[") else f"*{p}*"
        entries = [e for e in entries if fnmatch.fnmatchcase(e.name.lower(), p)]
    return entries


