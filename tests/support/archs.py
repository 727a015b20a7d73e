"""Architectures written out by hand from mmseg's and SSSegmentation's configs.

Tests use them to build models without ``model_index.json`` and to cross-check the manifest.
Published mmseg file names read ``<method>_<backbone>_<crop>_..._<dataset>_<date>-<hash>.pth``;
everything the network depends on follows from the method, the backbone token, the dataset
and the crop (769x769 configs use ``align_corners=True``).
"""
from __future__ import annotations

import re

from psegzoo.manifest import Architecture, BackboneSpec, HeadSpec

NUM_CLASSES = {
    "cityscapes": 19,
    "ade20k": 150,
    "voc12aug": 21,
    "pascal_context": 60,
    "pascal_context_59": 59,
    "coco-stuff10k": 171,
    "coco-stuff164k": 171,
}

_OS8 = ((1, 2, 1, 1), (1, 1, 2, 4))
_OS16 = ((1, 2, 2, 1), (1, 1, 1, 2))
_OS32 = ((1, 2, 2, 2), (1, 1, 1, 1))


def dataset_of(file_name: str) -> str:
    stem = re.sub(r"_\d{8}_\d{6}-[0-9a-f]{8}\.pth$", "", file_name)
    for ds in sorted(NUM_CLASSES, key=len, reverse=True):
        if stem.endswith("_" + ds):
            return ds
    raise ValueError(f"no dataset in {file_name!r}")


def _backbone(token: str) -> tuple[BackboneSpec, str]:
    m = re.fullmatch(r"r(?P<depth>\d+)(?P<b>b?)(?:-(?P<os>d8|d16-mg124))?", token)
    if not m:
        raise ValueError(f"unknown backbone token {token!r}")
    depth = int(m["depth"])
    kind = "ResNet" if m["b"] else "ResNetV1c"
    os_kind = m["os"] or "d32"
    strides, dilations = {"d8": _OS8, "d16-mg124": _OS16, "d32": _OS32}[os_kind]
    grid = (1, 2, 4) if os_kind == "d16-mg124" else None
    spec = BackboneSpec(type=kind, depth=depth, strides=strides, dilations=dilations, multi_grid=grid,
                        contract_dilation=True)
    return spec, os_kind


def mmseg_architecture(file_name: str) -> Architecture:
    """The architecture of a published mmseg checkpoint, from its file name."""
    method, token = file_name.split("_")[:2]
    backbone, os_kind = _backbone(token)
    dataset = dataset_of(file_name)
    n = NUM_CLASSES[dataset]
    align = "_769x769_" in file_name
    small = backbone.depth == 18
    top = 512 if small else 2048
    channels = 128 if small else 512
    if method == "pspnet":
        head = HeadSpec(type="PSPHead", in_channels=top, in_index=3, channels=channels, pool_scales=(1, 2, 3, 6))
    elif method == "deeplabv3":
        rates = (1, 6, 12, 18) if os_kind == "d16-mg124" else (1, 12, 24, 36)
        head = HeadSpec(type="ASPPHead", in_channels=top, in_index=3, channels=channels, dilations=rates)
    elif method == "psanet":
        mask = (66, 66) if dataset == "ade20k" else (97, 97)
        head = HeadSpec(type="PSAHead", in_channels=top, in_index=3, channels=channels, mask_size=mask,
                        psa_type="bi-direction", compact=False, shrink_factor=2, normalization_factor=1.0,
                        psa_softmax=True)
    elif method == "upernet":
        widths = tuple(backbone.base_channels * 2**i * (1 if small else 4) for i in range(4))
        head = HeadSpec(type="UPerHead", in_channels=widths, in_index=(0, 1, 2, 3), channels=channels,
                        pool_scales=(1, 2, 3, 6))
    else:
        raise ValueError(f"unknown method in {file_name!r}")
    aux = HeadSpec(type="FCNHead", in_channels=top // 2, in_index=2, channels=channels // 2, num_convs=1,
                   concat_input=False)
    return Architecture(num_classes=n, align_corners=align, backbone=backbone, decode_head=head, auxiliary_head=aux)


def ssseg_architecture(config: str) -> Architecture:
    """The architecture of SSSegmentation's ``pspnet_resnet{50,101}os{8,16}_{voc,ade20k,cityscapes}``."""
    m = re.fullmatch(r"pspnet_resnet(?P<depth>50|101)os(?P<os>8|16)_(?P<ds>voc|ade20k|cityscapes)", config)
    if not m:
        raise ValueError(f"not an SSSegmentation PSPNet config: {config!r}")
    strides, dilations = _OS8 if m["os"] == "8" else _OS16
    n = {"voc": 21, "ade20k": 150, "cityscapes": 19}[m["ds"]]
    backbone = BackboneSpec(type="ResNetV1c", depth=int(m["depth"]), strides=strides, dilations=dilations,
                            contract_dilation=True)
    head = HeadSpec(type="PSPHead", in_channels=2048, in_index=3, channels=512, pool_scales=(1, 2, 3, 6))
    return Architecture(num_classes=n, align_corners=False, backbone=backbone, decode_head=head)
