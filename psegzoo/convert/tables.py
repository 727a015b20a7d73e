"""Key mapping tables (source name -> psegzoo name): anchored regular expressions, one table per
architecture part, and the keys dropped on purpose."""
from __future__ import annotations

import re
from collections.abc import Sequence

from ..errors import CheckpointError
from ..manifest import Architecture

FORMATS = ("mmseg", "ssseg")

Rule = tuple["re.Pattern[str]", str]

_BN = r"(?P<p>weight|bias|running_mean|running_var)"
_CONV_OR_BN = r"(?P<leaf>conv\.weight|bn\.(?:weight|bias|running_mean|running_var))"


def _table(*pairs: tuple[str, str]) -> tuple[Rule, ...]:
    """Compile (pattern, replacement) pairs; patterns always match the whole key."""
    return tuple((re.compile(p), r) for p, r in pairs)


STEM_V1C = _table(
    (r"backbone\.stem\.0\.weight", "backbone.stem.conv1.weight"),
    (rf"backbone\.stem\.1\.{_BN}", r"backbone.stem.bn1.\g<p>"),
    (r"backbone\.stem\.3\.weight", "backbone.stem.conv2.weight"),
    (rf"backbone\.stem\.4\.{_BN}", r"backbone.stem.bn2.\g<p>"),
    (r"backbone\.stem\.6\.weight", "backbone.stem.conv3.weight"),
    (rf"backbone\.stem\.7\.{_BN}", r"backbone.stem.bn3.\g<p>"),
)

STEM_7X7 = _table(
    (r"backbone\.conv1\.weight", "backbone.stem.conv1.weight"),
    (rf"backbone\.bn1\.{_BN}", r"backbone.stem.bn1.\g<p>"),
)

RES_BLOCKS = _table(
    (r"backbone\.layer(?P<s>[1-4])\.(?P<b>\d+)\.(?P<c>conv[1-3])\.weight", r"backbone.layer\g<s>.\g<b>.\g<c>.weight"),
    (rf"backbone\.layer(?P<s>[1-4])\.(?P<b>\d+)\.(?P<n>bn[1-3])\.{_BN}", r"backbone.layer\g<s>.\g<b>.\g<n>.\g<p>"),
    (r"backbone\.layer(?P<s>[1-4])\.(?P<b>\d+)\.downsample\.0\.weight", r"backbone.layer\g<s>.\g<b>.shortcut.conv.weight"),
    (rf"backbone\.layer(?P<s>[1-4])\.(?P<b>\d+)\.downsample\.1\.{_BN}", r"backbone.layer\g<s>.\g<b>.shortcut.bn.\g<p>"),
)

_CLASSIFIER = (r"decode_head\.conv_seg\.(?P<p>weight|bias)", r"head.classifier.\g<p>")

PSP_HEAD = _table(
    (rf"decode_head\.psp_modules\.(?P<i>\d+)\.1\.{_CONV_OR_BN}", r"head.pyramid.\g<i>.\g<leaf>"),
    (rf"decode_head\.bottleneck\.{_CONV_OR_BN}", r"head.bottleneck.\g<leaf>"),
    _CLASSIFIER,
)

ASPP_HEAD = _table(
    (rf"decode_head\.image_pool\.1\.{_CONV_OR_BN}", r"head.image_pool.\g<leaf>"),
    (rf"decode_head\.aspp_modules\.(?P<i>\d+)\.{_CONV_OR_BN}", r"head.branches.\g<i>.\g<leaf>"),
    (rf"decode_head\.bottleneck\.{_CONV_OR_BN}", r"head.bottleneck.\g<leaf>"),
    _CLASSIFIER,
)


def _psa_head(psa_type: str) -> tuple[Rule, ...]:
    # mmseg's first branch (reduce/attention) is the collect one unless the head only distributes;
    # the *_p modules exist in bi-direction mode and distribute.
    first = "distribute" if psa_type == "distribute" else "collect"
    pairs = [
        (rf"decode_head\.reduce\.{_CONV_OR_BN}", rf"head.{first}.reduce.\g<leaf>"),
        (rf"decode_head\.attention\.0\.{_CONV_OR_BN}", rf"head.{first}.attention.\g<leaf>"),
        (r"decode_head\.attention\.1\.weight", f"head.{first}.mask.weight"),
    ]
    if psa_type == "bi-direction":
        pairs += [
            (rf"decode_head\.reduce_p\.{_CONV_OR_BN}", r"head.distribute.reduce.\g<leaf>"),
            (rf"decode_head\.attention_p\.0\.{_CONV_OR_BN}", r"head.distribute.attention.\g<leaf>"),
            (r"decode_head\.attention_p\.1\.weight", "head.distribute.mask.weight"),
        ]
    pairs += [
        (rf"decode_head\.proj\.{_CONV_OR_BN}", r"head.project.\g<leaf>"),
        (rf"decode_head\.bottleneck\.{_CONV_OR_BN}", r"head.bottleneck.\g<leaf>"),
        _CLASSIFIER,
    ]
    return _table(*pairs)


UPER_HEAD = _table(
    (rf"decode_head\.psp_modules\.(?P<i>\d+)\.1\.{_CONV_OR_BN}", r"head.pyramid.\g<i>.\g<leaf>"),
    (rf"decode_head\.bottleneck\.{_CONV_OR_BN}", r"head.bottleneck.\g<leaf>"),
    (rf"decode_head\.lateral_convs\.(?P<i>\d+)\.{_CONV_OR_BN}", r"head.lateral.\g<i>.\g<leaf>"),
    (rf"decode_head\.fpn_convs\.(?P<i>\d+)\.{_CONV_OR_BN}", r"head.fpn.\g<i>.\g<leaf>"),
    (rf"decode_head\.fpn_bottleneck\.{_CONV_OR_BN}", r"head.fuse.\g<leaf>"),
    _CLASSIFIER,
)

# Keys present in published files that inference does not use.
DROPPED = {
    "mmseg": _table((r"auxiliary_head\..+", ""), (r".+\.num_batches_tracked", "")),
    "ssseg": _table((r"auxiliary_decoder\..+", ""), (r".+\.num_batches_tracked", "")),
}

# SSSegmentation's PSPNet names -> mmseg's names (SSSEG layout documented by the reference data);
# the PPM fusion conv is ``bottleneck`` since 2020-12, ``fuse_layer`` before.
SSSEG_TO_MMSEG = _table(
    (r"backbone_net\.(?P<rest>(?:stem|layer[1-4])\..+)", r"backbone.\g<rest>"),
    (r"ppm_net\.branches\.(?P<i>\d+)\.1\.weight", r"decode_head.psp_modules.\g<i>.1.conv.weight"),
    (rf"ppm_net\.branches\.(?P<i>\d+)\.2\.{_BN}", r"decode_head.psp_modules.\g<i>.1.bn.\g<p>"),
    (r"ppm_net\.(?:bottleneck|fuse_layer)\.0\.weight", "decode_head.bottleneck.conv.weight"),
    (rf"ppm_net\.(?:bottleneck|fuse_layer)\.1\.{_BN}", r"decode_head.bottleneck.bn.\g<p>"),
    (r"decoder\.1\.(?P<p>weight|bias)", r"decode_head.conv_seg.\g<p>"),
)


def mapping_rules(arch: Architecture) -> tuple[Rule, ...]:
    """The mmseg-name -> psegzoo-name rules for ``arch``: its stem, residual blocks and head."""
    stems = {"ResNetV1c": STEM_V1C, "ResNet": STEM_7X7}
    if arch.backbone.type not in stems:
        raise CheckpointError(f"no key mapping for backbone type {arch.backbone.type!r}")
    head = arch.decode_head
    if head.type == "PSPHead":
        head_rules = PSP_HEAD
    elif head.type == "ASPPHead":
        head_rules = ASPP_HEAD
    elif head.type == "PSAHead":
        head_rules = _psa_head(head.psa_type or "bi-direction")
    elif head.type == "UPerHead":
        head_rules = UPER_HEAD
    else:
        raise CheckpointError(f"no key mapping for decode head type {head.type!r}")
    return stems[arch.backbone.type] + RES_BLOCKS + head_rules


def _rename(rules: Sequence[Rule], key: str) -> str | None:
    for pattern, replacement in rules:
        m = pattern.fullmatch(key)
        if m:
            return m.expand(replacement)
    return None


def _listing(items: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    more = f" ... ({len(items)} in all)" if len(items) > limit else ""
    return f"{shown}{more}"


