"""The model manifest: every published checkpoint as a frozen entry, and name resolution.

Standard library only: listing and resolving names must never import torch. The built-in manifest
is ``model_index.json`` shipped inside the package; extra manifests (``PSEGZOO_INDEX`` or ``index=``
/ ``--index``) with the same schema are merged over it, entry by name.

* :mod:`.entries`: the frozen records (``Entry``, ``Weights``, ``Architecture``, ...);
* :mod:`.schema`: reading a document, every field checked;
* :mod:`.names`: names, aliases, config names and dataset spellings;
* :mod:`.index`: the merged manifest, cached, and the public lookups.
"""
from __future__ import annotations

from .entries import (
    BACKBONE_TYPES,
    HEAD_TYPES,
    INDEX_ENV,
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_DILATION,
    MAX_MANIFEST_BYTES,
    MAX_SIDE,
    METHODS,
    RESIZE_LOGITS,
    RESNET_DEPTHS,
    SCHEMA_VERSION,
    SOURCES,
    TEST_MODES,
    Architecture,
    BackboneSpec,
    Dataset,
    Entry,
    HeadSpec,
    Resolution,
    Result,
    TestSettings,
    Weights,
)
from .index import (
    Manifest,
    builtin_index_path,
    extra_index_paths,
    get_dataset,
    get_entry,
    list_models,
    load_manifest,
    resolve,
)
from .names import DATASET_ALIASES, normalize_dataset, short_name
from .schema import check_weights_files, parse_manifest

__all__ = [
    "BACKBONE_TYPES",
    "DATASET_ALIASES",
    "HEAD_TYPES",
    "INDEX_ENV",
    "MAX_CHANNELS",
    "MAX_CLASSES",
    "MAX_DILATION",
    "MAX_MANIFEST_BYTES",
    "MAX_SIDE",
    "METHODS",
    "RESIZE_LOGITS",
    "RESNET_DEPTHS",
    "SCHEMA_VERSION",
    "SOURCES",
    "TEST_MODES",
    "Architecture",
    "BackboneSpec",
    "Dataset",
    "Entry",
    "HeadSpec",
    "Manifest",
    "Resolution",
    "Result",
    "TestSettings",
    "Weights",
    "builtin_index_path",
    "check_weights_files",
    "extra_index_paths",
    "get_dataset",
    "get_entry",
    "list_models",
    "load_manifest",
    "normalize_dataset",
    "parse_manifest",
    "resolve",
    "short_name",
]
