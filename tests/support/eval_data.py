"""The session's tiny evaluation datasets (see :mod:`tests.support.datasets`), made on first use.

Registered for every test module by conftest, so nothing heavy (torch) is imported at collection:
the builders are imported when a folder is first asked for.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from .hub import scrub_environment


class EvalData:
    """Checkpoints, an extra manifest and tiny dataset folders, made once per test session on demand.

    Each folder's predictions come from ``psegzoo predict`` run on its images (read back from the
    label PNGs it writes); its labels are made from them (``datasets.write_labels``).
    """

    def __init__(self, tmp: Path):
        from . import datasets

        self.d = datasets
        self.tmp = tmp
        self.index = datasets.write_extra_index(tmp / "eval_index.json", datasets.model_entries())
        self.home = tmp / "home"
        self._checkpoints: dict[str, Path] = {}
        self._folders: dict[str, Any] = {}
        self.preds: dict[str, dict[str, np.ndarray]] = {}

    def setenv(self, mp: pytest.MonkeyPatch) -> None:
        """Point psegzoo at this data's manifest and cache, with no other PSEGZOO_ setting."""
        scrub_environment(mp)
        for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "LINES"):
            mp.delenv(name, raising=False)
        mp.setenv("PSEGZOO_INDEX", str(self.index))
        mp.setenv("PSEGZOO_HOME", str(self.home))

    def model(self, key: str) -> str:
        """The test model for the folder of layout ``key``."""
        return self.d.model_name(self.d.LAYOUTS[key].dataset)

    def num_classes(self, dataset: str) -> int:
        from psegzoo.manifest import load_manifest

        return len(load_manifest(extra=[]).datasets[dataset].classes)

    def checkpoint(self, dataset: str) -> Path:
        if dataset not in self._checkpoints:
            from .served import mmseg_spec

            self._checkpoints[dataset] = self.d.write_checkpoint(mmseg_spec(), self.num_classes(dataset),
                                                                 self.tmp / f"ckpt_{dataset}.pth")
        return self._checkpoints[dataset]

    def folder(self, key: str) -> Any:
        """The tiny folder of layout ``key`` (a ``datasets.Built``: root, images and truths by name)."""
        if key not in self._folders:
            from psegzoo.manifest import load_manifest

            from .cli import cli

            layout = self.d.LAYOUTS[key]
            built = self.d.write_images(layout, self.tmp / "data" / key, seed=len(self._folders))
            out = self.tmp / "predict" / key
            with pytest.MonkeyPatch.context() as mp:
                self.setenv(mp)
                cli("predict", "-m", self.model(key), "--weights", self.checkpoint(layout.dataset),
                    "-o", out, "-q", *built.images.values())
            preds = {}
            for name, image in built.images.items():
                with Image.open(out / (image.stem + ".png")) as im:
                    assert im.mode == "P"
                    preds[name] = np.asarray(im).copy()
            palette = load_manifest(extra=[]).datasets[layout.dataset].palette
            self.d.write_labels(built, preds, self.num_classes(layout.dataset), palette)
            self.preds[key] = preds
            self._folders[key] = built
        return self._folders[key]

    def expected(self, key: str) -> dict:
        """The figures and counts computed by the test alone from the predictions and the truths."""
        built = self.folder(key)
        names = built.layout.names
        return self.d.expected([self.preds[key][n] for n in names], [built.truths[n] for n in names],
                               self.num_classes(built.layout.dataset))


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory) -> EvalData:
    """Tiny dataset folders of every layout, their checkpoints and predictions (made on first use)."""
    return EvalData(tmp_path_factory.mktemp("eval_data"))
