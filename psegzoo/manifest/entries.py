"""The manifest's frozen records: an entry per checkpoint, its weights, architecture and test settings."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..settings import INDEX_ENV as INDEX_ENV  # the manifest's own variable, read in psegzoo.settings

SCHEMA_VERSION = 1
METHODS = ("PSPNet", "PSANet", "DeepLabV3", "UPerNet")
SOURCES = ("mmsegmentation", "sssegmentation")
BACKBONE_TYPES = ("ResNetV1c", "ResNet")
HEAD_TYPES = ("PSPHead", "ASPPHead", "PSAHead", "UPerHead", "FCNHead")
TEST_MODES = ("whole", "slide")
RESIZE_LOGITS = ("via_input", "direct")

_SHA256_PREFIX = re.compile(r"[0-9a-f]{8}")
_SHA256_FULL = re.compile(r"[0-9a-f]{64}")
_WEIGHTS_URL = re.compile(r"(https?|file)://")
RESNET_DEPTHS = (18, 34, 50, 101, 152)

# Sane bounds for what a manifest may ask for: far beyond every published checkpoint, small
# enough that a typo or a hostile file cannot make psegzoo build a network or a buffer no
# machine holds.
MAX_CLASSES = 4096
MAX_CHANNELS = 16384
MAX_SIDE = 16384  # pixels, for crop sizes, strides and test scales
MAX_DILATION = 128
MAX_MANIFEST_BYTES = 64 * 10**6
_LARGEST_NUMBER = 1e15
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")




@dataclass(frozen=True)
class Weights:
    """Where a checkpoint lives and the hash it was published with (None: no published hash).

    ``urls``: alternative URLs of the same file, tried after ``url``; ``sha256``: the full hash,
    checked instead of ``sha256_prefix`` when given; ``size``: the exact size in bytes;
    ``origins``: those of ``url`` and ``urls`` that are the publisher's own hosts (every other
    URL is a third party). Only the built-in manifest may mark origins: an extra manifest's are
    dropped when it is read. These four are optional and left out of :meth:`to_json` when unset.
    """

    url: str
    file: str
    sha256_prefix: str | None
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    size: int | None = None
    origins: tuple[str, ...] = ()

    def is_origin(self, url: str) -> bool:
        """Whether ``url`` is one of the publisher's own URLs of this file."""
        return url in self.origins

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"url": self.url, "file": self.file, "sha256_prefix": self.sha256_prefix}
        if self.urls:
            obj["urls"] = list(self.urls)
        if self.origins:
            obj["origins"] = list(self.origins)
        if self.sha256 is not None:
            obj["sha256"] = self.sha256
        if self.size is not None:
            obj["size"] = self.size
        return obj


@dataclass(frozen=True)
class Result:
    """One evaluation of a checkpoint (the main one, or an extra dataset such as Dark Zurich)."""

    dataset: str
    miou: float | None
    miou_ms_flip: float | None


@dataclass(frozen=True)
class BackboneSpec:
    """A ResNet as mmseg builds it: ``ResNetV1c`` has the deep 3x3 stem, ``ResNet`` the 7x7 one."""

    type: str
    depth: int
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    multi_grid: tuple[int, ...] | None = None
    contract_dilation: bool = True
    stem_channels: int = 64
    base_channels: int = 64
    norm_eps: float = 1e-5


@dataclass(frozen=True)
class HeadSpec:
    """A decode or auxiliary head; which optional fields apply depends on ``type``."""

    type: str
    in_channels: int | tuple[int, ...]
    in_index: int | tuple[int, ...]
    channels: int
    dropout_ratio: float = 0.1
    pool_scales: tuple[int, ...] | None = None  # PSPHead, UPerHead
    dilations: tuple[int, ...] | None = None  # ASPPHead
    mask_size: tuple[int, int] | None = None  # PSAHead
    psa_type: str | None = None  # PSAHead: "bi-direction" | "collect" | "distribute"
    compact: bool | None = None  # PSAHead
    shrink_factor: int | None = None  # PSAHead
    normalization_factor: float | None = None  # PSAHead
    psa_softmax: bool | None = None  # PSAHead
    num_convs: int | None = None  # FCNHead
    concat_input: bool | None = None  # FCNHead


@dataclass(frozen=True)
class Architecture:
    """Everything needed to build the network of a checkpoint exactly."""

    num_classes: int
    align_corners: bool
    backbone: BackboneSpec
    decode_head: HeadSpec
    auxiliary_head: HeadSpec | None = None


@dataclass(frozen=True)
class TestSettings:
    """How the published mIoU was evaluated.

    ``scale`` is ``[long, short]`` for the keep-ratio resize. ``resize_logits`` is ``via_input``
    when logits are first upsampled to the resized input and then to the original size (mmseg),
    ``direct`` when the low-resolution logits go straight to the original size (SSSegmentation).
    """

    scale: tuple[int, int]
    mode: str
    crop_size: tuple[int, int] | None
    stride: tuple[int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_logits: str = "via_input"


@dataclass(frozen=True)
class Dataset:
    """Class names and palette of a dataset, index for index."""

    id: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]

    def to_json(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "palette": [list(c) for c in self.palette]}


@dataclass(frozen=True, repr=False)
class Entry:
    """One published checkpoint."""

    name: str
    method: str
    backbone: str
    dataset: str
    crop_size: tuple[int, int]
    schedule: int | str
    mem_gb: float | None
    fps: float | None
    miou: float | None
    miou_ms_flip: float | None
    source: str
    weights: Weights | None
    architecture: Architecture
    test: TestSettings
    results: tuple[Result, ...] = ()
    fp16: bool = False
    config: str | None = None

    @property
    def num_classes(self) -> int:
        return self.architecture.num_classes

    def to_json(self) -> dict[str, Any]:
        """The entry as its manifest object (lists, not tuples)."""
        return _to_jsonable(self)

    def __repr__(self) -> str:
        # Short, for logs and the REPL: every field is in to_json() and 'psegzoo info NAME'.
        miou = "-" if self.miou is None else f"{self.miou:.2f}"
        return f"Entry({self.name!r}, {self.method}, {self.backbone}, {self.dataset}, mIoU {miou})"


@dataclass(frozen=True)
class Resolution:
    """What a user-typed name resolved to."""

    query: str
    entry: Entry
    is_alias: bool
    alternatives: tuple[Entry, ...] = ()




def _to_jsonable(value: Any) -> Any:
    if isinstance(value, Weights):
        return value.to_json()
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _to_jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (tuple, list)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _to_jsonable(v) for k, v in value.items()}
    return value


