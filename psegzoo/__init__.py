"""psegzoo: published mmsegmentation checkpoints with nothing but PyTorch.

Attributes are imported lazily so that listing and resolving models never imports torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import (
    CacheError,
    CheckpointError,
    DistributedError,
    DownloadError,
    ExportError,
    ImageError,
    ImageTooLargeError,
    ManifestError,
    NoWeightsError,
    OfflineError,
    OutputError,
    PredictionError,
    PsegzooError,
    ServeError,
    UnknownModelError,
    UnverifiedWeightsError,
    VerificationError,
    VideoError,
)
from .manifest import (
    Dataset,
    Entry,
    Manifest,
    Resolution,
    get_dataset,
    get_entry,
    list_models,
    load_manifest,
    normalize_dataset,
    resolve,
    short_name,
)

__version__ = "0.1.0"

# name -> module that defines it; imported on first access.
_LAZY = {
    "cache_root": "hub",
    "checkpoint_path": "hub",
    "converted_path": "hub",
    "download": "hub",
    "fetch": "hub",
    "import_checkpoint": "hub",
    "verify": "hub",
    "cached": "hub",
    "remove": "hub",
    "load": "api",
    "convert_checkpoint": "api",
    "Segmenter": "api",
    "Prediction": "api",
    "benchmark": "bench",
    "inference_settings": "api",
    "select_device": "predictor",
    "autocast_dtype": "predictor",
    "find_images": "images",
    "load_image": "images",
    "max_pixels_limit": "images",
    "sample_image": "images",
    "format_size": "units",
    "read_record": "hub",
    "unique_output_names": "outputs",
    "parse_device": "devices",
    "DeviceName": "devices",
    "tune": "api",
    "cpu_fast_paths": "api",
    "DownloadOptions": "hub",
    "Fetched": "hub",
    "ImportResult": "hub",
    "MirrorResult": "hub",
    "CachedCheckpoint": "hub",
    "VerifyResult": "hub",
    "import_folder": "hub",
    "mirror": "hub",
    "converted_file": "hub",
    "evaluate": "evaluation",
    "DatasetError": "errors",
    "export_onnx": "export",
    "load_onnx": "export",
    "keep_freed_memory": "heap",
    "setup_process": "heap",
}
# Public submodules, imported on first access: ``psegzoo.distributed``, ``psegzoo.evaluation``,
# ``psegzoo.serve``, ``psegzoo.video``.
_SUBMODULES = ("distributed", "evaluation", "serve", "video")

__all__ = [
    "__version__",
    "CacheError",
    "CheckpointError",
    "DistributedError",
    "DownloadError",
    "ExportError",
    "ImageError",
    "ImageTooLargeError",
    "ManifestError",
    "NoWeightsError",
    "OfflineError",
    "OutputError",
    "PredictionError",
    "PsegzooError",
    "ServeError",
    "UnknownModelError",
    "UnverifiedWeightsError",
    "VerificationError",
    "VideoError",
    "Dataset",
    "Entry",
    "Manifest",
    "Resolution",
    "get_dataset",
    "get_entry",
    "list_models",
    "load_manifest",
    "normalize_dataset",
    "resolve",
    "short_name",
    *_LAZY,
    *_SUBMODULES,
]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'psegzoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
