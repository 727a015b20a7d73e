#!/usr/bin/env python
"""Build ``tests/data`` from the mmseg/SSSegmentation reference material (run once; output committed).

    python tools/make_test_data.py --reference /path/to/reference --zoo /path/to/zoo

Writes:
- ``zoo/*.md``: the zoo tables, copied as they are (tools/build_index.py reads them; the manifest tests
  count and regenerate model_index.json from them).
- ``state_dict_specs.json.gz``: every reference state-dict spec (40 mmseg, 6 SSSegmentation in the
  1.7.0 layout and the 6 of the 2020 layout) and the index files mapping published checkpoints to specs.
- ``golden/`` and ``sss_golden/``: the reference logits. Files whose logits have 150 classes are
  slimmed to stay small: ``logits`` becomes ``logits_slice`` (channels ``start:stop:step`` given in
  the metadata field ``logits_channels``) plus ``labels``, the argmax over all classes.
  Everything else is copied as it is.
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
SLICE = (0, 150, 25)  # 6 of the 150 ADE20K channels
SLIM_ABOVE_CLASSES = 100


def _read_json(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_specs(ref: Path, out: Path) -> None:
    mm = ref / "state_dicts"
    ss = ref / "sss_state_dicts"
    data = {
        "mmseg": {
            "index": _read_json(mm / "index.json"),
            "specs": {p.stem: _read_json(p)["state_dict"] for p in sorted(mm.glob("*.json")) if p.name != "index.json"},
        },
        "ssseg": {
            "index": _read_json(ss / "index.json"),
            "specs": {p.stem: _read_json(p)["state_dict"] for p in sorted(ss.glob("*.json")) if p.name != "index.json"},
            "legacy_specs": {p.stem: _read_json(p)["state_dict"] for p in sorted((ss / "legacy_2020").glob("*.json"))},
        },
    }
    raw = json.dumps(data, separators=(",", ":"), sort_keys=False).encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(raw)
    out.write_bytes(buf.getvalue())
    print(f"{out.relative_to(ROOT)}: {len(data['mmseg']['specs'])} mmseg specs, "
          f"{len(data['ssseg']['specs'])}+{len(data['ssseg']['legacy_specs'])} SSSegmentation specs, "
          f"{out.stat().st_size} bytes")


def copy_golden(src: Path, dst: Path) -> None:
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    logits = tensors.get("logits")
    if logits is None or logits.shape[1] <= SLIM_ABOVE_CLASSES:
        shutil.copyfile(src, dst)
        print(f"{dst.relative_to(ROOT)}: copied, {dst.stat().st_size} bytes")
        return
    start, stop, step = SLICE
    slim = {k: v for k, v in tensors.items() if k != "logits"}
    slim["logits_slice"] = logits[:, start:stop:step].contiguous()
    if "labels" not in slim:
        slim["labels"] = logits.argmax(dim=1).to(torch.int32)
    meta["logits_channels"] = f"{start}:{stop}:{step}"
    meta["logits_shape"] = json.dumps(list(logits.shape))
    meta["slimmed"] = "logits reduced to logits_slice (channels logits_channels); labels = argmax over all channels"
    save_file(slim, str(dst), metadata=meta)
    print(f"{dst.relative_to(ROOT)}: slimmed, {dst.stat().st_size} bytes")


def copy_zoo(src: Path, dst: Path) -> None:
    """The tables as they are; the folder's README is the zoo's, not a table."""
    dst.mkdir(exist_ok=True)
    for table in sorted(src.glob("*.md")):
        if table.name != "README.md":
            shutil.copyfile(table, dst / table.name)
            print(f"{(dst / table.name).relative_to(ROOT)}: copied, {table.stat().st_size} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, default=ROOT.parent / "shared" / "reference")
    parser.add_argument("--zoo", type=Path, default=ROOT.parent / "shared" / "zoo")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data")
    args = parser.parse_args()
    ref, out = args.reference, args.out
    out.mkdir(parents=True, exist_ok=True)
    write_specs(ref, out / "state_dict_specs.json.gz")
    copy_zoo(args.zoo, out / "zoo")
    for folder in ("golden", "sss_golden"):
        (out / folder).mkdir(exist_ok=True)
        for src in sorted((ref / folder).glob("*.safetensors")):
            copy_golden(src, out / folder / src.name)
    image = ref / "golden" / "image.png"
    if image.exists():
        shutil.copyfile(image, out / "golden" / "image.png")


if __name__ == "__main__":
    main()
