"""Output files read back as what was written; colours, overlays, confidences, names."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from psegzoo.errors import OutputError, PredictionError
from psegzoo.manifest import load_manifest
from psegzoo.outputs import (
    class_areas,
    colorize,
    confidence_from_logits,
    confidence_from_probs,
    output_paths,
    overlay,
    read_confidence_png,
    save_confidence,
    save_json,
    save_label_png,
    save_logits,
    save_rgb_png,
    summary,
    unique_names,
)

PALETTE = [(128, 64, 128), (244, 35, 232), (70, 70, 70), (0, 0, 142)]
CLASSES = ("road", "sidewalk", "building", "car")


@pytest.fixture()
def labels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 4, (9, 13)).astype(np.uint8)


def test_label_png_is_a_palette_png_holding_the_class_indices(tmp_path, labels):
    path = save_label_png(labels, PALETTE, tmp_path / "sub" / "x.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "P"
        np.testing.assert_array_equal(np.asarray(im), labels)
        colours = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(colours, np.array(PALETTE, np.uint8)[labels])
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_label_png_with_a_real_dataset_palette(tmp_path):
    ds = load_manifest().dataset("ade20k")
    labels = (np.arange(150 * 2) % 150).reshape(10, 30).astype(np.uint8)
    path = save_label_png(labels, ds.palette, tmp_path / "ade.png")
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.asarray(im), labels)
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), np.array(ds.palette, np.uint8)[labels])


def test_label_png_refuses_more_than_256_classes_and_bad_labels(tmp_path):
    big = [(i % 256, i // 256, 0) for i in range(300)]
    with pytest.raises(OutputError, match="at most 256 classes"):
        save_label_png(np.zeros((2, 2), np.int32), big, tmp_path / "x.png")
    with pytest.raises(PredictionError, match="palette has 4 colours"):
        save_label_png(np.full((2, 2), 4, np.uint8), PALETTE, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_colorize_and_overlay(labels):
    colour = colorize(labels, PALETTE)
    assert colour.shape == (9, 13, 3) and colour.dtype == np.uint8
    for k, rgb in enumerate(PALETTE):
        assert (colour[labels == k] == rgb).all()
    image = np.random.default_rng(1).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    np.testing.assert_array_equal(overlay(image, labels, PALETTE, 0.0), image)
    np.testing.assert_array_equal(overlay(image, labels, PALETTE, 1.0), colour)
    half = overlay(image, labels, PALETTE, 0.5)
    np.testing.assert_array_equal(half, np.rint((image.astype(np.float64) + colour) / 2))
    with pytest.raises(PredictionError, match="opacity"):
        overlay(image, labels, PALETTE, 1.5)
    with pytest.raises(PredictionError, match="labels' size"):
        overlay(image[:5], labels, PALETTE)


def test_confidence_png_is_16_bit_and_npy_is_float(tmp_path):
    conf = np.array([[0.0, 1.0, 0.5], [1 / 65535, 0.25, 0.99999]], np.float32)
    png = save_confidence(conf, tmp_path / "c_probs.png")
    with Image.open(png) as im:
        assert im.mode in ("I;16", "I")
        raw = np.asarray(im)
    np.testing.assert_array_equal(raw, [[0, 65535, 32768], [1, 16384, 65534]])  # round(p * 65535)
    np.testing.assert_allclose(read_confidence_png(png), conf, atol=0.5 / 65535)
    npy = save_confidence(conf, tmp_path / "c_probs.npy")
    back = np.load(npy)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, conf)
    with pytest.raises(OutputError, match="png"):
        save_confidence(conf, tmp_path / "c.jpg")


def test_confidence_from_logits_is_the_max_softmax():
    logits = np.random.default_rng(2).normal(size=(5, 7, 6)).astype(np.float32) * 4
    e = np.exp(logits.astype(np.float64))
    expected = (e / e.sum(0)).max(0)
    np.testing.assert_allclose(confidence_from_logits(logits), expected, rtol=1e-5)
    probs = (e / e.sum(0)).astype(np.float32)
    np.testing.assert_allclose(confidence_from_probs(probs), expected, rtol=1e-5)


def test_logits_npy_is_float16(tmp_path):
    logits = np.random.default_rng(3).normal(size=(3, 40, 50)).astype(np.float32) * 10
    path = save_logits(logits, tmp_path / "x_logits.npy")
    back = np.load(path)
    assert back.dtype == np.float16 and back.shape == logits.shape
    np.testing.assert_array_equal(back, logits.astype(np.float16))
    # a non-contiguous view is written in logical order too
    path2 = save_logits(logits[:, ::2, ::-1], tmp_path / "y_logits.npy")
    np.testing.assert_array_equal(np.load(path2), logits[:, ::2, ::-1].astype(np.float16))


def test_rgb_png(tmp_path, labels):
    colour = colorize(labels, PALETTE)
    path = save_rgb_png(colour, tmp_path / "x_color.png")
    with Image.open(path) as im:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), colour)


def test_class_areas_and_summary_json(tmp_path):
    labels = np.array([[0, 0, 3, 3], [3, 3, 3, 1]], np.uint8)
    areas = class_areas(labels, CLASSES)
    assert areas == [
        {"index": 3, "name": "car", "pixels": 5, "percent": 62.5},
        {"index": 0, "name": "road", "pixels": 2, "percent": 25.0},
        {"index": 1, "name": "sidewalk", "pixels": 1, "percent": 12.5},
    ]
    doc = summary(labels, CLASSES, model="pspnet_x", image="a.png", timings={"forward": 0.1234567891})
    path = save_json(doc, tmp_path / "a.json")
    back = json.loads(path.read_text(encoding="utf-8"))
    assert back["width"] == 4 and back["height"] == 2 and back["model"] == "pspnet_x"
    assert back["classes"] == areas and back["timings"] == {"forward": 0.123457}
    assert sum(c["pixels"] for c in back["classes"]) == labels.size


def test_output_paths():
    p = output_paths("out", "sub/img")
    assert p.labels == Path("out/sub/img.png")
    assert p.overlay == Path("out/sub/img_overlay.png") and p.color == Path("out/sub/img_color.png")
    assert p.probs_png == Path("out/sub/img_probs.png") and p.probs_npy == Path("out/sub/img_probs.npy")
    assert p.logits == Path("out/sub/img_logits.npy") and p.json == Path("out/sub/img.json")
    for bad in ("../x", "/abs/x", "", "a/../b"):
        with pytest.raises(OutputError):
            output_paths("out", bad)


def test_unique_names_never_share_a_file():
    names = unique_names(["a", "b/a", "a", "A", "a_overlay", "a_2", "b/a"])
    assert names == ["a", "b/a", "a_2", "A_3", "a_overlay_2", "a_2_2", "b/a_2"]
    files = [str(f).lower() for n in names for f in vars(output_paths("o", n)).values()]
    assert len(files) == len(set(files))


def test_write_failure_is_an_output_error(tmp_path, labels):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        save_label_png(labels, PALETTE, blocker / "x.png")


def test_images_and_outputs_do_not_import_torch():
    """Reading images and writing results work without torch (the layering of the package)."""
    code = "import sys, psegzoo.images, psegzoo.outputs; print('torch' in sys.modules)"
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


@pytest.mark.parametrize("stem, label_file", [(".", "..png"), ("..", "...png"), ("a:b", "a:b.png"), ("c:\\d", "c:\\d.png"),
                                             ("-x", "-x.png"), ("new\nline", "new\nline.png"), ("ünï", "ünï.png")])
def test_any_legal_file_name_gives_output_names(tmp_path, labels, stem, label_file):
    (name,) = unique_names([stem])
    paths = output_paths(tmp_path / "out", name)
    assert paths.labels == tmp_path / "out" / label_file and paths.overlay.name == stem + "_overlay.png"
    save_label_png(labels, PALETTE, paths.labels)
    assert [p.name for p in (tmp_path / "out").iterdir()] == [label_file]
    nested = output_paths(tmp_path / "out", f"x:y/{name}")
    assert nested.json == tmp_path / "out" / "x:y" / (stem + ".json")


def test_outputs_never_land_on_an_input(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    street = out / "street.png"
    street.write_bytes(b"input")
    overlay_input = out / "a_overlay.png"
    overlay_input.write_bytes(b"input")
    elsewhere = tmp_path / "elsewhere.png"
    names = unique_names(["street", "a", "elsewhere"], out_dir=out, inputs=[street, overlay_input, elsewhere])
    assert names == ["street_2", "a_2", "elsewhere"]
    # Compared by real path: a symlinked output folder, or a symlinked folder inside it.
    (tmp_path / "link").symlink_to(out, target_is_directory=True)
    assert unique_names(["street"], out_dir=tmp_path / "link", inputs=[street]) == ["street_2"]
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "p.png").write_bytes(b"input")
    (out / "sub").symlink_to(photos, target_is_directory=True)
    assert unique_names(["sub/p", "p"], out_dir=out, inputs=[photos / "p.png"]) == ["sub/p_2", "p"]
    # Without inputs in the way, names stay as they are.
    assert unique_names(["street", "a"], out_dir=tmp_path / "fresh", inputs=[street, overlay_input]) == ["street", "a"]


def test_an_input_reached_through_a_symlink_is_protected_at_its_target(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    real = out / "real.png"
    real.write_bytes(b"input")
    (tmp_path / "link.png").symlink_to(real)
    assert unique_names(["real", "link"], out_dir=out, inputs=[tmp_path / "link.png"]) == ["real_2", "link"]
