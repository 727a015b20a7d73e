"""The architectures tests build for a reference spec, taken from the built-in manifest.

``model_index.json`` is the contract under test: when it is missing, these helpers fail.
"""
from __future__ import annotations

from functools import lru_cache

from psegzoo.manifest import Architecture, Entry, Manifest, load_manifest

from .synth import load_specs


@lru_cache(maxsize=1)
def builtin_manifest() -> Manifest:
    """The built-in manifest alone (no extra indexes)."""
    return load_manifest(extra=[])


def entry_for_file(manifest: Manifest, file_name: str) -> Entry:
    for entry in manifest.models:
        if entry.weights is not None and entry.weights.file == file_name:
            return entry
    raise LookupError(f"no manifest entry publishes {file_name}")


def mmseg_spec_files() -> dict[str, str]:
    """Spec id -> one published file that uses it (the first by name)."""
    chosen: dict[str, str] = {}
    for file_name, spec_id in sorted(load_specs().mmseg_index.items()):
        chosen.setdefault(spec_id, file_name)
    return chosen


def mmseg_arch(file_name: str) -> Architecture:
    return entry_for_file(builtin_manifest(), file_name).architecture


def ssseg_arch(config: str) -> Architecture:
    return builtin_manifest().by_name()[config].architecture


def ssseg_spec_configs() -> dict[str, str]:
    """SSSegmentation spec id -> one config that uses it."""
    chosen: dict[str, str] = {}
    for config, spec_id in sorted(load_specs().ssseg_index.items()):
        chosen.setdefault(spec_id, config)
    return chosen
