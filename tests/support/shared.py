"""Data the tests read that is not psegzoo's own: the zoo tables, the reference state-dict specs and
mmsegmentation's package (configs and dataset classes).

The zoo tables and the specs are committed under ``tests/data`` (made by ``tools/make_test_data.py``),
so a clone needs nothing beside it. mmsegmentation's package is looked up in a folder named by an
environment variable, else beside the checkout, else fetched as a pinned wheel
(tests/support/mmseg_wheel.py).
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

from .synth import SPECS_FILE

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
ZOO = DATA / "zoo"
MMSEG_ENV = "PSEGZOO_TEST_MMSEG"


def _search_up(*relative: str) -> Path:
    """The first ``<ancestor>/<relative>`` that exists, else the one beside the checkout."""
    for ancestor in REPO.parents:
        candidate = ancestor.joinpath(*relative)
        if candidate.exists():
            return candidate
    return REPO.parent.joinpath(*relative)


def mmseg_dir() -> Path:
    """mmsegmentation 1.2.2's package folder (holding ``.mim/configs`` and ``datasets``)."""
    env = os.environ.get(MMSEG_ENV, "").strip()
    return Path(env) if env else _search_up("ref", "mmseg", "mmseg")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value), encoding="utf-8")


def write_reference(folder: Path) -> Path:
    """Lay out the committed specs as the reference folder ``tools/build_index.py --reference`` reads:
    ``state_dicts/{index,<spec>}.json`` and ``sss_state_dicts/{index,<spec>}.json``."""
    with gzip.open(SPECS_FILE, "rt", encoding="utf-8") as f:
        data = json.load(f)
    for part, name in (("mmseg", "state_dicts"), ("ssseg", "sss_state_dicts")):
        out = folder / name
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "index.json", data[part]["index"])
        for spec_id, state_dict in data[part]["specs"].items():
            _write_json(out / f"{spec_id}.json", {"id": spec_id, "state_dict": state_dict})
    return folder
