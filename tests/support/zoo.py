"""Which architecture a test builds for a reference spec: the manifest's when it exists, else ours.

``model_index.json`` is the contract; until it exists the hand-written architectures in
:mod:`tests.support.archs` stand in for it.
"""
from __future__ import annotations

from functools import lru_cache

from psegzoo.manifest import Architecture, Entry, Manifest, builtin_index_path, load_manifest

from .archs import mmseg_architecture, ssseg_architecture
from .synth import load_specs


def manifest_available() -> bool:
    return builtin_index_path().exists()


@lru_cache(maxsize=1)
def manifest_or_none() -> Manifest | None:
    """The built-in manifest (no extra indexes), or None when ``model_index.json`` is absent."""
    if not manifest_available():
        return None
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
    manifest = manifest_or_none()
    if manifest is None:
        return mmseg_architecture(file_name)
    return entry_for_file(manifest, file_name).architecture


def ssseg_arch(config: str) -> Architecture:
    manifest = manifest_or_none()
    if manifest is None:
        return ssseg_architecture(config)
    return manifest.by_name()[config].architecture


def ssseg_spec_configs() -> dict[str, str]:
    """SSSegmentation spec id -> one config that uses it."""
    chosen: dict[str, str] = {}
    for config, spec_id in sorted(load_specs().ssseg_index.items()):
        chosen.setdefault(spec_id, config)
    return chosen
