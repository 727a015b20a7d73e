"""``psegzoo predict / convert / bench`` as a user runs them, from a loopback HTTP server.

Synthetic checkpoints in the published formats are served through an extra manifest whose
entries clone built-in ones with a small test scale (tests/support/served.py). The end-to-end
cases run the installed ``psegzoo`` console script in a subprocess; the rest use click's CliRunner.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

import psegzoo
from psegzoo.manifest import get_dataset
from tests.support.cli import cli, run_script
from tests.support.http_server import FileServer
from tests.support.hub import scrub_environment
from tests.support.precision import assert_same_prediction, clear_pixels
from tests.support.served import (
    MMSEG_BASE,
    SSSEG_BASE,
    mmseg_spec,
    serve_clone,
    sha256_hex,
    ssseg_spec,
    write_index,
)
from tests.support.synth import write_mmseg_checkpoint, write_ssseg_checkpoint

MM_NAME = "pspnet_r18-d8_clitest_cityscapes"
SS_NAME = "pspnet_resnet50os16_clitest_voc"


@dataclass
class Zoo:
    server: FileServer
    home: Path  # the module's cache
    mm_file: str
    mm_local: Path  # the served mmseg checkpoint under its published file name
    ss_file: str
    ss_sha: str

    def gets(self, file: str) -> int:
        return len(self.server.gets(f"/served/{file}"))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    mp = pytest.MonkeyPatch()
    scrub_environment(mp)
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "LINES"):
        mp.delenv(name, raising=False)
    server = FileServer()
    try:
        local = write_mmseg_checkpoint(mmseg_spec(), tmp / "mm.pth")
        mm = serve_clone(server, MMSEG_BASE, MM_NAME, local.read_bytes())
        local = local.rename(tmp / mm["weights"]["file"])
        ss_bytes = write_ssseg_checkpoint(ssseg_spec(), tmp / "ss.pth").read_bytes()
        (tmp / "ss.pth").unlink()
        ss = serve_clone(server, SSSEG_BASE, SS_NAME, ss_bytes, verified=False)
        index = write_index(tmp / "extra_index.json", [mm, ss])
        mp.setenv("PSEGZOO_INDEX", str(index))
        mp.setenv("PSEGZOO_HOME", str(tmp / "home"))
        mp.setenv("PSEGZOO_BACKOFF", "0.01")
        mp.setenv("PSEGZOO_RETRIES", "1")
        mp.setenv("PSEGZOO_TIMEOUT", "10")
        mp.setenv("COLUMNS", "80")  # error lines must stay whole even in a narrow pipe
        yield Zoo(server=server, home=tmp / "home", mm_file=mm["weights"]["file"], mm_local=local,
                  ss_file=ss["weights"]["file"], ss_sha=sha256_hex(ss_bytes))
    finally:
        server.close()
        mp.undo()


@pytest.fixture(scope="module")
def seg(zoo):
    """The served mmseg entry loaded in-process (downloads into the module's cache)."""
    return psegzoo.load(MM_NAME, device="cpu", progress=False)


@pytest.fixture
def fresh_home(zoo, tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("PSEGZOO_HOME", str(home))
    return home


def make_image(seed: int, h: int = 40, w: int = 60) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 4, yy * 6, (xx + yy) * 2], axis=-1).astype(np.float64)
    img[h // 4: 3 * h // 4, w // 3: 3 * w // 4] = rng.integers(0, 256, 3)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def save_image(path: Path, seed: int = 0, **kwargs) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = make_image(seed, **kwargs)
    Image.fromarray(arr).save(path)
    return arr


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zero_width_png() -> bytes:
    """A well-formed PNG header (valid CRCs) that declares a 0 x 10 image."""
    ihdr = struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0)
    chunks = png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"")) + png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def read_labels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "P"
        return np.asarray(im).copy()


def palette_of(path: Path, n: int) -> list[tuple[int, ...]]:
    with Image.open(path) as im:
        flat = im.getpalette()[: 3 * n]
    return [tuple(flat[i: i + 3]) for i in range(0, len(flat), 3)]


def error_lines(text: str) -> list[str]:
    """The lines of ``text`` that start with ``error:`` (a wrapped message would leave its tail outside)."""
    lines = [line for line in text.splitlines() if line.strip()]
    return [line for line in lines if line.startswith("error: ")]


def only_error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


# --------------------------------------------------------------------------------------------
# End to end, as a user runs it (subprocess)
# --------------------------------------------------------------------------------------------


def test_predict_end_to_end_from_the_loopback_server(zoo, fresh_home, tmp_path):
    image = tmp_path / "street.png"
    save_image(image, seed=3)
    out = tmp_path / "out"
    gets = zoo.gets(zoo.mm_file)
    proc = run_script("predict", "--model", MM_NAME, image, "-o", out, "--overlay", "--color", "--probs", "--logits",
                      "--json", "--device", "cpu")
    assert zoo.gets(zoo.mm_file) == gets + 1
    # Downloaded, verified, converted into the cache.
    ckpt = fresh_home / "checkpoints" / zoo.mm_file
    assert ckpt.is_file() and (fresh_home / "records" / (ckpt.name + ".json")).is_file()
    with safe_open(str(fresh_home / "converted" / ckpt.name.replace(".pth", ".safetensors")), "pt") as f:
        assert f.metadata()["name"] == MM_NAME and f.metadata()["source_sha256"] == sha256_hex(ckpt.read_bytes())
    (line,) = proc.stdout.splitlines()  # --json: one JSON object per image on stdout
    summary = json.loads(line)
    assert summary["input"] == str(image) and summary["output"] == str(out / "street.png")
    assert "1 image(s) written" in proc.stderr

    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["street.png", "street_color.png", "street_overlay.png", "street_probs.png", "street_logits.npy", "street.json"]
    )
    # The label map: palette PNG, the dataset's palette, values = the in-process prediction.
    expected = psegzoo.load(MM_NAME, device="cpu", progress=False).predict(image)
    cityscapes = get_dataset("cityscapes")
    labels = read_labels(out / "street.png")
    assert_same_prediction(labels, expected)  # another process: near-ties may flip
    assert len(np.unique(labels)) > 1
    assert palette_of(out / "street.png", 19) == [tuple(c) for c in cityscapes.palette]
    clear = clear_pixels(expected.scores)
    with Image.open(out / "street_color.png") as im:
        assert im.mode == "RGB" and np.array_equal(np.asarray(im)[clear], expected.colorize()[clear])
    with Image.open(out / "street_overlay.png") as im:
        assert im.mode == "RGB" and np.array_equal(np.asarray(im)[clear], expected.overlay(0.5)[clear])
    with Image.open(out / "street_probs.png") as im:
        assert im.mode.startswith("I") and im.size == (60, 40)
        confidence = np.asarray(im).astype(np.float64) / 65535
    np.testing.assert_allclose(confidence, expected.confidence(), atol=1e-4)
    logits = np.load(out / "street_logits.npy")
    assert logits.dtype == np.float16 and logits.shape == (19, 40, 60)
    np.testing.assert_allclose(logits, expected.logits, rtol=2e-3, atol=2e-3)
    doc = json.loads((out / "street.json").read_text())
    assert doc["model"] == MM_NAME and (doc["width"], doc["height"]) == (60, 40)
    assert sorted(summary["files"]) == sorted(str(p) for p in out.iterdir())
    assert summary["classes"] == doc["classes"] and summary["model"] == MM_NAME and summary["width"] == 60
    assert abs(sum(c["percent"] for c in doc["classes"]) - 100.0) < 1e-2
    assert sum(c["pixels"] for c in doc["classes"]) == 40 * 60
    assert {c["name"] for c in doc["classes"]} <= set(cityscapes.classes)
    assert doc["timings"]


def test_ssseg_entry_needs_allow_unverified_then_trusts_its_hash(zoo, fresh_home, tmp_path):
    image = tmp_path / "room.png"
    save_image(image, seed=4)
    before = zoo.gets(zoo.ss_file)
    proc = run_script("predict", "--model", SS_NAME, image, "-o", tmp_path / "refused", code=1)
    line = only_error_line(proc.stderr)
    assert SS_NAME in line and "--allow-unverified" in line
    assert zoo.gets(zoo.ss_file) == before and not (tmp_path / "refused").exists()

    proc = run_script("predict", "--model", SS_NAME, image, "-o", tmp_path / "first", "--allow-unverified", "-q")
    (notice,) = [line for line in proc.stderr.splitlines() if zoo.ss_sha in line]  # shown once, whole
    assert SS_NAME in notice and "trust" in notice
    assert (fresh_home / "trusted" / f"{SS_NAME}.sha256").read_text().split()[0] == zoo.ss_sha
    first = read_labels(tmp_path / "first" / "room.png")
    assert first.shape == (40, 60)
    assert palette_of(tmp_path / "first" / "room.png", 21) == [tuple(c) for c in get_dataset("voc12aug").palette]

    # Later runs verify against the trust record: no flag needed, no new download.
    proc = run_script("predict", "--model", SS_NAME, image, "-o", tmp_path / "later", "-q")
    assert zoo.ss_sha not in proc.stderr
    later = read_labels(tmp_path / "later" / "room.png")
    # Each run is its own process (its own threads and fast paths): near-ties may flip.
    expected = psegzoo.load(SS_NAME, device="cpu", progress=False).predict(image)
    assert_same_prediction(first, expected)
    assert_same_prediction(later, expected)
    assert zoo.gets(zoo.ss_file) == before + 1


# --------------------------------------------------------------------------------------------
# Bad inputs: one line each, the rest still written, exit 1
# --------------------------------------------------------------------------------------------


def test_bad_inputs_are_reported_and_the_rest_written(zoo, seg, tmp_path):
    good = tmp_path / "good.png"
    save_image(good, seed=1)
    also_good = tmp_path / "deeper" / "also_good.jpg"
    also_good.parent.mkdir()
    Image.fromarray(make_image(2)).save(also_good, quality=95)
    not_image = tmp_path / "notes.png"
    not_image.write_text("these are my notes, not a picture\n")
    truncated = tmp_path / "truncated.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    bomb = tmp_path / "bomb.png"
    Image.new("L", (300, 200)).save(bomb)  # 60000 pixels, compresses to a few hundred bytes
    zero = tmp_path / "zero.png"
    zero.write_bytes(zero_width_png())
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.png"
    out = tmp_path / "out"

    result = cli("predict", "-m", MM_NAME, good, missing, not_image, truncated, bomb, zero, empty, also_good,
                 "-o", out, "--max-pixels", "10000", "-q", code=1)
    errors = error_lines(result.stderr)
    assert len(errors) == 6 and len(result.stderr.strip().splitlines()) == 6, result.stderr
    by_file = {name: [e for e in errors if name in e] for name in
               ("missing.png", "notes.png", "truncated.png", "bomb.png", "zero.png", "empty.png")}
    assert all(len(v) == 1 for v in by_file.values()), by_file
    assert "not found" in by_file["missing.png"][0]
    assert "not an image" in by_file["notes.png"][0]
    assert "truncated" in by_file["truncated.png"][0]
    assert "10000" in by_file["bomb.png"][0] and "decompression bomb" in by_file["bomb.png"][0]
    assert "--max-pixels N" in by_file["bomb.png"][0] and "max_pixels=" not in by_file["bomb.png"][0]
    assert "zero size" in by_file["zero.png"][0]
    assert "empty" in by_file["empty.png"][0]
    # The good images are written, and only they.
    assert sorted(p.name for p in out.iterdir()) == ["also_good.png", "good.png"]
    assert_same_prediction(read_labels(out / "good.png"), seg.predict(good))
    assert_same_prediction(read_labels(out / "also_good.png"), seg.predict(also_good))


def test_zero_by_zero_file_is_a_clean_error(zoo, seg, tmp_path):
    # A 0x0 image Pillow can open: a header-only PNG written by hand.
    ihdr = struct.pack(">IIBBBBB", 0, 0, 8, 0, 0, 0, 0)
    path = tmp_path / "nothing.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b""))
    result = cli("predict", "-m", MM_NAME, path, "-o", tmp_path / "out", code=1)
    (line,) = error_lines(result.stderr)
    assert "nothing.png" in line and "zero size (0x0)" in line, result.stderr
    assert f"0 image(s) written to {tmp_path / 'out'}, 1 failed" in result.stderr.splitlines()
    assert not (tmp_path / "out").exists()


def test_stride_larger_than_crop_fails_before_any_download(zoo, fresh_home, tmp_path):
    image = tmp_path / "a.png"
    save_image(image)
    requests = len(zoo.server.requests)
    result = cli("predict", "-m", MM_NAME, image, "--mode", "slide", "--crop-size", "32x32", "--stride", "64x64",
                 "-o", tmp_path / "out", code=1)
    line = only_error_line(result.stderr)
    assert "--stride 64x64" in line and "--crop-size 32x32" in line and "crop_size" not in line  # flags, not keywords
    assert len(zoo.server.requests) == requests and not fresh_home.exists() and not (tmp_path / "out").exists()


def test_unknown_model_is_one_line(zoo, fresh_home, tmp_path):
    image = tmp_path / "a.png"
    save_image(image)
    result = cli("predict", "-m", "pspnet_r18-d8_clitest_cityscapez", image, "-o", tmp_path / "out", code=1)
    line = only_error_line(result.stderr)
    assert "unknown model" in line and MM_NAME in line  # the close name is suggested
    assert "'psegzoo list'" in line and "list_models" not in line  # the CLI names commands, not functions
    assert not fresh_home.exists()


def test_no_image_at_all_is_an_error(zoo, seg, tmp_path):
    (tmp_path / "empty_dir").mkdir()
    result = cli("predict", "-m", MM_NAME, tmp_path / "empty_dir", "-o", tmp_path / "out", code=1)
    assert "no image or video files" in result.stderr and len(error_lines(result.stderr)) == 2


# --------------------------------------------------------------------------------------------
# Many inputs: directories, globs, names that collide
# --------------------------------------------------------------------------------------------


def test_directory_input_is_recursive_and_skips_the_output_folder(zoo, seg, tmp_path):
    photos = tmp_path / "photos"
    save_image(photos / "a.png", seed=1)
    save_image(photos / "trip" / "b.png", seed=2)
    (photos / "readme.txt").write_text("not an image, and not picked up from a folder")
    out = photos / "segmented"
    result = cli("predict", "-m", MM_NAME, photos, "-o", out, "--color")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == [
        "a.png", "a_color.png", "trip/b.png", "trip/b_color.png"]
    assert_same_prediction(read_labels(out / "trip" / "b.png"), seg.predict(photos / "trip" / "b.png"))
    assert "2 image(s) written" in result.stderr
    # Again: the outputs inside the input folder are not taken as inputs.
    result = cli("predict", "-m", MM_NAME, photos, "-o", out)
    assert "2 image(s) written" in result.stderr


def test_glob_input(zoo, seg, tmp_path):
    save_image(tmp_path / "data" / "x1.png", seed=1)
    save_image(tmp_path / "data" / "deep" / "x2.png", seed=2)
    save_image(tmp_path / "data" / "y.png", seed=3)
    out = tmp_path / "out"
    cli("predict", "-m", MM_NAME, str(tmp_path / "data" / "**" / "x*.png"), "-o", out, "-q")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["deep/x2.png", "x1.png"]
    result = cli("predict", "-m", MM_NAME, str(tmp_path / "data" / "*.nothing"), "-o", out, code=1)
    assert "no image file matches" in result.stderr


def test_duplicate_stems_do_not_overwrite_each_other(zoo, seg, tmp_path):
    first = tmp_path / "cam1" / "frame.png"
    second = tmp_path / "cam2" / "frame.png"
    third = tmp_path / "cam2" / "frame.jpg"
    save_image(first, seed=1)
    save_image(second, seed=2)
    Image.fromarray(make_image(3)).save(third, quality=95)
    out = tmp_path / "out"
    result = cli("predict", "-m", MM_NAME, first, second, third, "-o", out, "--json")
    mapping = [line for line in result.stderr.splitlines() if " -> " in line]  # renamed images are named
    assert mapping == [f"{second} -> {out / 'frame_2'}.png (name taken by another input)",
                       f"{third} -> {out / 'frame_3'}.png (name taken by another input)"]
    assert [json.loads(line)["output"] for line in result.stdout.splitlines()] == [
        str(out / "frame.png"), str(out / "frame_2.png"), str(out / "frame_3.png")]
    assert sorted(p.name for p in out.iterdir()) == [
        "frame.json", "frame.png", "frame_2.json", "frame_2.png", "frame_3.json", "frame_3.png"]
    for path, name in ((first, "frame"), (second, "frame_2"), (third, "frame_3")):
        assert_same_prediction(read_labels(out / f"{name}.png"), seg.predict(path))
        assert json.loads((out / f"{name}.json").read_text())["input"] == str(path)  # as on stdout
    assert not np.array_equal(read_labels(out / "frame.png"), read_labels(out / "frame_2.png"))

    # Two folders holding the same names: also kept apart.
    out2 = tmp_path / "out2"
    cli("predict", "-m", MM_NAME, tmp_path / "cam1", tmp_path / "cam2", "-o", out2, "-q")
    assert sorted(p.name for p in out2.iterdir()) == ["frame.png", "frame_2.png", "frame_3.png"]


def test_predict_overrides_and_tta_from_the_command_line(zoo, seg, tmp_path):
    image = tmp_path / "a.png"
    save_image(image, seed=5)
    out = tmp_path / "out"
    cli("predict", "-m", MM_NAME, image, "-o", out / "slide", "--mode", "slide", "--crop-size", "32x48",
        "--stride", "16x24", "--batch-windows", "3", "-q")
    expected = seg.predict(image, mode="slide", crop_size=(32, 48), stride=(16, 24))
    assert_same_prediction(read_labels(out / "slide" / "a.png"), expected)
    cli("predict", "-m", MM_NAME, image, "-o", out / "tta", "--flip", "--scales", "0.5,1.0", "--scale", "96x48",
        "--probs", "npy", "-q")
    expected = seg.predict(image, flip=True, scales=[0.5, 1.0], scale=(96, 48))
    assert_same_prediction(read_labels(out / "tta" / "a.png"), expected)
    np.testing.assert_allclose(np.load(out / "tta" / "a_probs.npy"), expected.confidence(), atol=1e-5)
    for bad in (["--scales", "0.5,x"], ["--scale", "64by32"], ["--half", "--bf16"], ["--opacity", "0.3"],
                ["--weights", image, "--mirror", "http://127.0.0.1:9"], ["--weights", image, "--offline"]):
        result = cli("predict", "-m", MM_NAME, image, "-o", out / "bad", *bad, code=2)
        assert "Traceback" not in result.output
    result = cli("predict", "-m", MM_NAME, "-o", out / "bad", code=2)
    assert "--sample" in result.output
    assert not (out / "bad").exists()


def test_sample_image_from_the_command_line(zoo, seg, tmp_path):
    out = tmp_path / "out"
    result = cli("predict", "-m", MM_NAME, "--sample", "-o", out, "--json")
    (line,) = result.stdout.splitlines()
    assert json.loads(line)["input"] == str(psegzoo.sample_image())
    assert_same_prediction(read_labels(out / "street.png"), seg.predict(psegzoo.sample_image()))


# --------------------------------------------------------------------------------------------
# Checked before the model is loaded
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device, words", [("bogus", "bogus"), ("cuda:7", "cuda:7"), ("tpu", "tpu")])
def test_bad_device_fails_before_any_model_load(zoo, fresh_home, tmp_path, device, words):
    image = tmp_path / "a.png"
    save_image(image)
    requests = len(zoo.server.requests)
    result = cli("predict", "-m", MM_NAME, image, "-o", tmp_path / "out", "--device", device, code=1)
    line = only_error_line(result.stderr)
    assert words in line and "device" in line
    # Nothing was fetched, cached or written: the device was refused before the load began.
    assert len(zoo.server.requests) == requests and not fresh_home.exists() and not (tmp_path / "out").exists()


def test_unusable_output_folder_fails_before_any_model_load(zoo, fresh_home, tmp_path):
    image = tmp_path / "a.png"
    save_image(image)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file where the output folder would go")
    requests = len(zoo.server.requests)
    for out in (blocker, blocker / "sub" / "deeper"):
        result = cli("predict", "-m", MM_NAME, image, "-o", out, code=1)
        line = only_error_line(result.stderr)
        assert str(out) in line and "notes.txt" in line and "is a file" in line and "--output" in line
    assert len(zoo.server.requests) == requests and not fresh_home.exists()
    assert blocker.read_text() == "a file where the output folder would go"
    # With --onnx too: the exported file is loaded only once the output folder is known to be usable.
    damaged = tmp_path / "model.onnx"
    damaged.write_bytes(b"not an onnx file")
    line = only_error_line(cli("predict", "--onnx", damaged, image, "-o", blocker, code=1).stderr)
    assert "notes.txt" in line and "is a file" in line and "onnx" not in line


# --------------------------------------------------------------------------------------------
# No output over an input; the output folder is never an input
# --------------------------------------------------------------------------------------------


def test_output_into_the_input_folder_never_replaces_an_input(zoo, seg, tmp_path):
    folder = tmp_path / "photos"
    street = folder / "street.png"
    original = save_image(street, seed=7)
    before = street.read_bytes()
    result = cli("predict", "-m", MM_NAME, street, "-o", folder, "--overlay")  # `-o .` beside the photo
    assert street.read_bytes() == before  # the photo is intact
    assert sorted(p.name for p in folder.iterdir()) == ["street.png", "street_2.png", "street_2_overlay.png"]
    assert f"{street} -> {folder / 'street_2'}.png" in result.stderr
    assert_same_prediction(read_labels(folder / "street_2.png"), seg.predict(original))
    # Run again on the folder itself, or a glob in it: the outputs are not fed back in, nothing is written.
    for again in (folder, str(folder / "*.png")):
        result = cli("predict", "-m", MM_NAME, again, "-o", folder, code=1)
        assert "output folder" in result.stderr and "no images to predict" in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["street.png", "street_2.png", "street_2_overlay.png"]
    assert street.read_bytes() == before


def test_reruns_never_feed_outputs_back_in(zoo, seg, tmp_path):
    photos = tmp_path / "photos"
    save_image(photos / "a.png", seed=1)
    out = photos / "seg"
    for _ in range(3):
        result = cli("predict", "-m", MM_NAME, photos, str(photos / "**" / "*.png"), "-o", out, "--overlay")
        assert "1 image(s) written" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_overlay.png"]


# --------------------------------------------------------------------------------------------
# Odd names, links and folders: the batch goes on
# --------------------------------------------------------------------------------------------


def test_any_legal_file_name_is_predicted(zoo, seg, tmp_path):
    src = tmp_path / "in:put"
    names = ["..png", "...png", "a:b.png", "c:d/e:f.png", "-dash.png", "sp ace.png"]
    for i, n in enumerate(names):
        (src / n).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(make_image(i)).save(src / n, format="PNG")  # Pillow takes no extension from "..png"
    raw = os.fsencode(src) + b"/caf\xe9.png"  # not UTF-8
    Image.fromarray(make_image(9)).save(os.fsdecode(raw), format="PNG")
    out = tmp_path / "out"
    result = cli("predict", "-m", MM_NAME, *(src / n for n in names[:2]), src, "-o", out, "--json")
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == sorted(["..png", "...png", "a:b.png", "c:d/e:f.png", "-dash.png", "sp ace.png",
                              os.fsdecode(b"caf\xe9.png")])
    assert "7 image(s) written" in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 7 and os.fsdecode(raw) in {d["input"] for d in lines}  # JSON keeps the exact name
    assert_same_prediction(read_labels(out / "..png"), seg.predict(src / "..png"))


def test_symlink_loop_and_unreadable_folder(zoo, seg, tmp_path, monkeypatch):
    from tests.test_images import _make_unreadable

    data = tmp_path / "data"
    save_image(data / "a.png", seed=1)
    save_image(data / "locked" / "b.png", seed=2)
    (data / "loop").symlink_to(data, target_is_directory=True)
    locked = data / "locked"
    _make_unreadable(locked, monkeypatch)
    try:
        out = tmp_path / "out"
        result = cli("predict", "-m", MM_NAME, str(data / "**" / "*.png"), "-o", out, code=1)
        (line,) = error_lines(result.stderr)
        assert str(locked) in line and "cannot be read" in line
        assert [p.name for p in out.iterdir()] == ["a.png"]
    finally:
        locked.chmod(0o755)


def test_an_elongated_image_is_predicted_with_the_others(zoo, seg, tmp_path):
    good = tmp_path / "good.png"
    save_image(good, seed=1)
    thin = tmp_path / "thin.png"
    Image.fromarray(np.zeros((1, 5000, 3), np.uint8)).save(thin)  # would resize to zero rows without the 1-pixel floor
    out = tmp_path / "out"
    result = cli("predict", "-m", MM_NAME, thin, good, "-o", out, "--json")
    assert error_lines(result.stderr) == []
    docs = [json.loads(x) for x in result.stdout.splitlines()]
    assert [("error" in d, d["input"]) for d in docs] == [(False, str(thin)), (False, str(good))]
    assert sorted(p.name for p in out.iterdir()) == ["good.json", "good.png", "thin.json", "thin.png"]
    assert read_labels(out / "thin.png").shape == (1, 5000)


# --------------------------------------------------------------------------------------------
# convert and bench
# --------------------------------------------------------------------------------------------


def test_convert_by_name_and_by_file(zoo, fresh_home, tmp_path):
    result = cli("convert", MM_NAME)
    cached = fresh_home / "converted" / zoo.mm_file.replace(".pth", ".safetensors")
    assert result.stdout.strip() == str(cached) and cached.is_file()

    renamed = tmp_path / "downloaded.pth"
    shutil.copyfile(zoo.mm_local, renamed)
    out = tmp_path / "x.safetensors"
    result = cli("convert", renamed, "-o", out, "--model", MM_NAME)
    assert result.stdout.strip() == str(out)
    with safe_open(str(out), "pt") as f, safe_open(str(cached), "pt") as g:
        assert f.metadata()["name"] == MM_NAME and f.metadata()["source_file"] == "downloaded.pth"
        assert f.metadata()["source_sha256"] == g.metadata()["source_sha256"]
        assert sorted(f.keys()) == sorted(g.keys())
        assert all((f.get_tensor(k) == g.get_tensor(k)).all() for k in f.keys())
    # The converted file predicts like the download.
    image = tmp_path / "a.png"
    save_image(image)
    cli("predict", "-m", MM_NAME, "--weights", out, image, "-o", tmp_path / "o1", "-q")
    cli("predict", "-m", MM_NAME, image, "-o", tmp_path / "o2", "-q")
    expected = psegzoo.load(MM_NAME, device="cpu", progress=False).predict(image)
    assert_same_prediction(read_labels(tmp_path / "o1" / "a.png"), expected)
    assert_same_prediction(read_labels(tmp_path / "o2" / "a.png"), expected)

    result = cli("convert", renamed, code=1)  # the file name does not say which model it is
    line = only_error_line(result.stderr)
    assert "downloaded.pth" in line and "--model pspnet_r50-d8" in line and "psegzoo.load(" not in line
    result = cli("convert", tmp_path / "absent.pth", "--model", MM_NAME, code=1)
    assert "does not exist" in only_error_line(result.stderr)


def test_bench_json_compares_with_the_baseline(zoo, seg):
    result = cli("bench", MM_NAME, "--size", "32x48", "--mode", "whole", "--mode", "slide", "--json")
    report = json.loads(result.stdout)
    assert report["model"] == MM_NAME and report["size"] == [32, 48] and report["weights"] == "cached checkpoint"
    assert report["device"] == "cpu" and report["load_seconds"] > 0
    rows = {(r["mode"], r["variant"]): r for r in report["runs"]}
    assert set(rows) == {("whole", "optimized"), ("whole", "baseline"), ("slide", "optimized"), ("slide", "baseline")}
    for mode in ("whole", "slide"):
        fast = rows[(mode, "optimized")]
        assert fast["speedup"] > 0 and fast["labels_equal"] == 1.0
        assert fast["speedup"] == pytest.approx(rows[(mode, "baseline")]["seconds"] / fast["seconds"])
    result = cli("bench", MM_NAME, "--size", "32x48", "--mode", "whole", "--no-baseline")
    assert "whole" in result.stdout and "optimized" in result.stdout


def test_bench_without_a_cached_checkpoint_uses_initial_weights(zoo, fresh_home):
    requests = len(zoo.server.requests)
    report = json.loads(cli("bench", MM_NAME, "--size", "32x48", "--mode", "whole", "--json").stdout)
    assert report["weights"].startswith("initial weights")
    (fast,) = [r for r in report["runs"] if r["variant"] == "optimized"]
    assert fast["labels_equal"] > 0.99 and fast["speedup"] > 0
    assert len(zoo.server.requests) == requests and not (fresh_home / "checkpoints").exists()
