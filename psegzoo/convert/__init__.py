"""Published checkpoints -> psegzoo state dicts: safe reading, explicit key mapping, safetensors files.

Reading never unpickles code: ``torch.load(..., weights_only=True)`` with a short allowlist of numpy
scalar types that old ``meta`` dicts may hold. The key mapping is one table of anchored regular
expressions per architecture part (stem, residual blocks, each head); every source key must be
mapped or deliberately dropped, every model key filled, every shape equal, or the conversion fails
naming the keys. This package does not import the models: callers pass the model's expected keys
and shapes (``psegzoo.models.state_shapes(model)``).

* :mod:`.reading`: the checkpoint file, read safely and hashed in the same pass;
* :mod:`.tables`: the mapping tables;
* :mod:`.mapping`: the conversion and its checks;
* :mod:`.converted`: psegzoo's own safetensors files, and loading them into a model.
"""
from __future__ import annotations

from .converted import (
    converted_metadata,
    load_converted,
    load_converted_bytes,
    load_into,
    save_converted,
    write_converted,
)
from .mapping import check_converted, check_values, convert_state_dict
from .reading import MIN_TORCH, check_classes, read_checkpoint
from .tables import FORMATS, mapping_rules

__all__ = [
    "FORMATS",
    "MIN_TORCH",
    "check_classes",
    "check_converted",
    "check_values",
    "convert_state_dict",
    "converted_metadata",
    "load_converted",
    "load_converted_bytes",
    "load_into",
    "mapping_rules",
    "read_checkpoint",
    "save_converted",
    "write_converted",
]
