"""The ``psegzoo`` command line.

Uses only the public API of the ``psegzoo`` package. Torch is imported only by the commands that
run models (``convert``, ``predict``, ``bench``), so ``list`` and ``info`` stay instant. One module
per command family; the group below adds each command explicitly.
"""
from __future__ import annotations

import click

import psegzoo

from . import bench, export, listing, predict, weights


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(psegzoo.__version__, prog_name="psegzoo")
def main() -> None:
    """Published mmsegmentation segmentation checkpoints, with nothing but PyTorch.

    \b
    Examples:
      psegzoo list --dataset ade20k
      psegzoo info pspnet_r101-d8_cityscapes
      psegzoo download upernet_r50_ade20k
      psegzoo predict --model pspnet_r101-d8_cityscapes street.png
    """


for _command in (
    listing.list_command,
    listing.info_command,
    weights.download_command,
    weights.cache_group,
    weights.verify_command,
    weights.import_command,
    weights.convert_command,
    predict.predict_command,
    bench.bench_command,
    export.export_command,
):
    main.add_command(_command)
