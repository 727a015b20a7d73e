"""Reading images: every mode to RGB by the documented rules, EXIF orientation, and refusals."""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import psegzoo
from psegzoo.errors import ImageError
from psegzoo.images import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, find_images, load_image, max_pixels_limit, sample_image


def _png_bytes(w: int, h: int, rows: bytes, *, bit_depth: int = 8, color_type: int = 0) -> bytes:
    """A PNG written by hand (filter byte per row is the caller's), for headers Pillow won't write."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _save(im: Image.Image, path: Path, **kw) -> Path:
    im.save(path, **kw)
    return path


@pytest.fixture()
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# Modes
# --------------------------------------------------------------------------------------------


def test_rgb_png_round_trip(tmp_path, rgb):
    out = load_image(_save(Image.fromarray(rgb), tmp_path / "a.png"))
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


def test_grey_is_repeated(tmp_path):
    grey = np.arange(35, dtype=np.uint8).reshape(5, 7) * 7
    out = load_image(_save(Image.fromarray(grey), tmp_path / "g.png"))
    np.testing.assert_array_equal(out, np.stack([grey] * 3, axis=2))


def test_la_drops_alpha(tmp_path):
    grey = np.array([[10, 200], [30, 40]], np.uint8)
    alpha = np.array([[0, 255], [128, 0]], np.uint8)
    im = Image.merge("LA", [Image.fromarray(grey), Image.fromarray(alpha)])
    out = load_image(_save(im, tmp_path / "la.png"))
    np.testing.assert_array_equal(out, np.stack([grey] * 3, axis=2))


def test_rgba_drops_alpha_without_compositing(tmp_path, rgb):
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    alpha[0] = 255
    im = Image.fromarray(np.concatenate([rgb, alpha[..., None]], axis=2))
    assert im.mode == "RGBA"
    np.testing.assert_array_equal(load_image(_save(im, tmp_path / "a.png")), rgb)


def test_palette_with_transparency_gives_palette_colours(tmp_path):
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255]
    idx = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    im = Image.fromarray(idx)
    im.putpalette(palette)
    im.info["transparency"] = 1  # colour 1 (green) fully transparent
    path = _save(im, tmp_path / "p.png", transparency=1)
    with Image.open(path) as check:
        assert check.mode == "P" and "transparency" in check.info
    expected = np.array(palette, np.uint8).reshape(3, 3)[idx]
    np.testing.assert_array_equal(load_image(path), expected)


def test_palette_with_alpha_bytes(tmp_path):
    idx = np.array([[0, 1], [1, 0]], np.uint8)
    im = Image.fromarray(idx)
    im.putpalette([10, 20, 30, 200, 100, 50])
    path = _save(im, tmp_path / "p.png", transparency=bytes([0, 128]))
    np.testing.assert_array_equal(load_image(path), np.array([[10, 20, 30], [200, 100, 50]], np.uint8)[idx])


def test_cmyk_uses_pillow_conversion(tmp_path):
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0]], [[0, 0, 0, 255], [0, 255, 255, 0]]], np.uint8)
    im = Image.frombytes("CMYK", (2, 2), cmyk.tobytes())
    out = load_image(im)
    # white, cyan, black, red: the plain CMYK formula, no ICC profile
    expected = np.array([[[255, 255, 255], [0, 255, 255]], [[0, 0, 0], [255, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(out, expected)
    tif = _save(im, tmp_path / "c.tif")
    np.testing.assert_array_equal(load_image(tif), expected)


def test_sixteen_bit_grey_png_keeps_high_byte(tmp_path):
    values = np.array([[0, 255, 256, 511], [32768, 40000, 65280, 65535]], np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "g16.png")
    with Image.open(path) as check:
        assert check.mode == "I;16"
    expected = np.array([[0, 0, 1, 1], [128, 156, 255, 255]], np.uint8)  # v // 256, by hand
    np.testing.assert_array_equal(load_image(path), np.stack([expected] * 3, axis=2))


def test_sixteen_bit_big_endian_and_int_modes():
    values = np.array([[0, 300, 65535]], np.uint16)
    big = Image.fromarray(values.astype(">u2"))
    assert big.mode == "I;16B"
    np.testing.assert_array_equal(load_image(big)[..., 0], [[0, 1, 255]])
    wide = Image.fromarray(np.array([[-5, 300, 65535, 100000]], np.int32))
    assert wide.mode == "I"
    np.testing.assert_array_equal(load_image(wide)[..., 0], [[0, 1, 255, 255]])  # clipped to 16 bits, then >> 8


def test_sixteen_bit_rgb_png_keeps_high_byte(tmp_path):
    px = [(0x1234, 0xABCD, 0xFFFF), (0x00FF, 0x0100, 0x8000)]
    raw = b"\x00" + b"".join(struct.pack(">HHH", *p) for p in px)
    path = tmp_path / "rgb16.png"
    path.write_bytes(_png_bytes(2, 1, raw, bit_depth=16, color_type=2))
    np.testing.assert_array_equal(load_image(path), [[[0x12, 0xAB, 0xFF], [0x00, 0x01, 0x80]]])


def test_float_and_bilevel_modes(tmp_path):
    f = Image.fromarray(np.array([[0.4, 1.5, 254.6, -3.0, 300.0]], np.float32))
    assert f.mode == "F"
    np.testing.assert_array_equal(load_image(f)[..., 1], [[0, 1, 254, 0, 255]])
    bits = Image.fromarray(np.array([[0, 255, 0]], np.uint8)).convert("1")
    path = _save(bits, tmp_path / "b.png")
    with Image.open(path) as check:
        assert check.mode == "1"
    np.testing.assert_array_equal(load_image(path)[..., 2], [[0, 255, 0]])


@pytest.mark.parametrize(
    "orientation, turn",
    [(1, lambda a: a), (3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1))],
)
def test_exif_orientation_is_applied(tmp_path, rgb, orientation, turn):
    im = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(im, tmp_path / "o.png", exif=exif.tobytes())
    np.testing.assert_array_equal(load_image(path), turn(rgb))
    with Image.open(path) as opened:  # a PIL image the caller opened gets the same treatment
        np.testing.assert_array_equal(load_image(opened), turn(rgb))


def test_first_frame_of_animation(tmp_path):
    frames = [Image.new("RGB", (4, 3), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    out = load_image(path)
    assert out.shape == (3, 4, 3)
    np.testing.assert_array_equal(out[0, 0], [255, 0, 0])


# --------------------------------------------------------------------------------------------
# Arrays
# --------------------------------------------------------------------------------------------


def test_arrays(rgb):
    assert load_image(rgb) is rgb  # already right: no copy
    np.testing.assert_array_equal(load_image(rgb[..., 0]), np.stack([rgb[..., 0]] * 3, axis=2))
    rgba = np.concatenate([rgb, np.zeros_like(rgb[..., :1])], axis=2)
    np.testing.assert_array_equal(load_image(rgba), rgb)
    np.testing.assert_array_equal(load_image(rgb[:, ::-1]), rgb[:, ::-1])
    assert load_image(rgb[:, ::-1]).flags.c_contiguous
    sixteen = rgb.astype(np.uint16) * 257  # v * 257 >> 8 == v
    np.testing.assert_array_equal(load_image(sixteen), rgb)


@pytest.mark.parametrize(
    "bad, words",
    [
        (np.zeros((4, 4, 3), np.float32), "dtype float32"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
        (np.zeros((0, 4, 3), np.uint8), "zero size"),
    ],
)
def test_bad_arrays(bad, words):
    with pytest.raises(ImageError, match=words):
        load_image(bad)


def test_unsupported_input_type():
    with pytest.raises(ImageError, match="file path, a PIL image"):
        load_image(12)


# --------------------------------------------------------------------------------------------
# Refusals: each an ImageError naming the file
# --------------------------------------------------------------------------------------------


def _one_line(exc: pytest.ExceptionInfo, path: Path) -> str:
    text = str(exc.value)
    assert "\n" not in text and str(path) in text
    return text


def test_missing_file(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(ImageError) as exc:
        load_image(path)
    assert "not found" in _one_line(exc, path)


def test_directory_and_empty_file(tmp_path):
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError) as exc:
        load_image(empty)
    assert "empty" in _one_line(exc, empty)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels\n" * 10)
    with pytest.raises(ImageError) as exc:
        load_image(path)
    assert "not an image" in _one_line(exc, path)


@pytest.mark.parametrize("fmt, suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
def test_truncated_file(tmp_path, fmt, suffix):
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format=fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as exc:
        load_image(path)
    assert "truncated" in _one_line(exc, path)
    with Image.open(path) as lazy, pytest.raises(ImageError, match="truncated"):  # opened by the caller
            load_image(lazy)


@pytest.mark.parametrize("w, h", [(0, 4), (4, 0)])
def test_zero_size_png(tmp_path, w, h):
    path = tmp_path / "zero.png"
    path.write_bytes(_png_bytes(w, h, b""))
    with pytest.raises(ImageError) as exc:
        load_image(path)
    assert f"zero size ({w}x{h})" in _one_line(exc, path)


def test_bomb_guard_refuses_before_decoding(tmp_path, monkeypatch):
    monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
    # Declares 12000 x 12000 = 144 M pixels (above the default limit) with a few bytes of data:
    # decoding it would fail, so the refusal must come from the header alone.
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_bytes(12000, 12000, b"\x00"))
    assert DEFAULT_MAX_PIXELS < 12000 * 12000
    with pytest.raises(ImageError) as exc:
        load_image(path)
    text = _one_line(exc, path)
    assert "decompression bomb" in text and MAX_PIXELS_ENV in text
    assert "max_pixels=" in text and "--max-pixels" not in text  # Python callers read keyword arguments
    assert "--max-pixels N" in exc.value.cli_message() and "max_pixels=" not in exc.value.cli_message()
    # Far beyond Pillow's own hard limit: still our error type and message style.
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_bytes(100000, 100000, b"\x00"))
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(huge)


def test_pixel_limit_argument_and_env(tmp_path, monkeypatch, rgb):
    path = _save(Image.fromarray(rgb), tmp_path / "small.png")  # 35 pixels
    with pytest.raises(ImageError, match="exceeds the limit of 34"):
        load_image(path, max_pixels=34)
    assert load_image(path, max_pixels=35).shape == (5, 7, 3)
    monkeypatch.setenv(MAX_PIXELS_ENV, "30")
    assert max_pixels_limit() == 30
    with pytest.raises(ImageError, match="limit of 30"):
        load_image(path)
    assert load_image(path, max_pixels=100).shape == (5, 7, 3)  # the argument wins over the env
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ImageError, match=MAX_PIXELS_ENV):
        load_image(path)
    with pytest.raises(ImageError, match="positive"):
        max_pixels_limit(0)


# --------------------------------------------------------------------------------------------
# Finding files
# --------------------------------------------------------------------------------------------


def _touch_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2)).save(path, format="PNG")
    return path


def test_find_images_expands_dirs_globs_and_reports_missing(tmp_path):
    root = tmp_path / "photos"
    a = _touch_png(root / "b.png")
    b = _touch_png(root / "a.JPG")
    c = _touch_png(root / "sub" / "c.png")
    _touch_png(root / ".hidden" / "h.png")
    _touch_png(root / ".dot.png")
    (root / "readme.txt").write_text("x")
    odd = _touch_png(tmp_path / "explicit.data")
    other = _touch_png(tmp_path / "more" / "d.png")
    deep = _touch_png(tmp_path / "more" / "x" / "e.png")

    found = find_images([odd, root, tmp_path / "missing.png", str(tmp_path / "more" / "**" / "*.png"),
                         str(tmp_path / "none_*.png"), a])
    assert found.paths == [odd, b, a, c, other, deep]  # input order, sorted within a folder, no repeats
    assert [f.relative for f in found.images] == ["explicit", "a", "b", "sub/c", "d", "x/e"]
    assert len(found.errors) == 2
    assert "missing.png" in str(found.errors[0]) and "not found" in str(found.errors[0])
    assert "none_*.png" in str(found.errors[1])


def test_find_images_excludes_output_dir_and_flags_empty_dir(tmp_path):
    _touch_png(tmp_path / "in" / "a.png")
    _touch_png(tmp_path / "in" / "out" / "a.png")
    (tmp_path / "empty").mkdir()
    found = find_images([tmp_path / "in", tmp_path / "empty"], exclude=[tmp_path / "in" / "out"])
    assert [f.relative for f in found.images] == ["a"]
    assert len(found.errors) == 1 and "no image files" in str(found.errors[0])


def test_recursive_glob_survives_directory_symlink_loops(tmp_path):
    root = tmp_path / "data"
    a = _touch_png(root / "a.png")
    b = _touch_png(root / "deep" / "b.png")
    (root / "deep" / "loop").symlink_to(root, target_is_directory=True)  # data/deep/loop -> data
    (root / "self").symlink_to(root / "self", target_is_directory=True)  # a link to itself
    outside = _touch_png(tmp_path / "elsewhere" / "c.png")
    (root / "link_out").symlink_to(outside.parent, target_is_directory=True)
    found = find_images([str(root / "**" / "*.png")])  # would walk data/deep/loop/deep/loop/... forever
    assert found.paths == [a, b] and not found.errors
    assert [f.relative for f in found.images] == ["a", "deep/b"]
    folder = find_images([root])
    assert folder.paths == [a, b] and not folder.errors


def test_glob_matches_like_glob_module_without_following_links(tmp_path):
    root = tmp_path / "g"
    files = [_touch_png(root / p) for p in ("x1.png", "y.png", "s/x2.png", "s/t/x3.jpg", "u/x4.png", ".h/x5.png")]
    _touch_png(root / "s" / ".x6.png")
    assert find_images([str(root / "x*.png")]).paths == [files[0]]
    assert find_images([str(root / "*" / "x*.png")]).paths == [files[2], files[4]]
    assert find_images([str(root / "**" / "x*")]).paths == [files[0], files[2], files[3], files[4]]
    assert find_images([str(root / "s" / "**")]).paths == [files[2], files[3]]  # a matched folder gives its images
    assert [f.relative for f in find_images([str(root / "s" / "**" / "*.jpg")]).images] == ["t/x3"]
    assert find_images([str(root / "[su]" / "x?.png")]).paths == [files[2], files[4]]


@pytest.mark.parametrize("name", ["..png", "...png", ".png", "a:b.png", "c:\\d.png", "-x.png", "sp ace.png",
                                  "new\nline.png", "ünï.png", "a.b.c.png"])
def test_any_legal_file_name_is_found_and_named(tmp_path, name):
    path = _touch_png(tmp_path / name)
    for found in (find_images([path]), find_images([tmp_path]) if not name.startswith(".") else None):
        if found is None:
            continue
        assert found.paths == [path] and not found.errors
        (image,) = found.images
        assert image.relative == (name[: -len(".png")] if name != ".png" else ".png")


def test_any_legal_folder_name_is_walked(tmp_path):
    path = _touch_png(tmp_path / "in" / "c:d" / "e.f:g" / "x:y.png")
    found = find_images([tmp_path / "in"])
    assert found.paths == [path] and [f.relative for f in found.images] == ["c:d/e.f:g/x:y"]


def test_undecodable_file_name(tmp_path):
    raw = os.fsencode(tmp_path) + b"/caf\xe9.png"  # Latin-1 bytes: not UTF-8
    Image.new("RGB", (2, 2)).save(os.fsdecode(raw), format="PNG")
    found = find_images([tmp_path])
    assert len(found.paths) == 1 and os.fsencode(found.paths[0]) == raw and not found.errors


def _make_unreadable(folder: Path, monkeypatch) -> None:
    """chmod 000; where that does not stop this user (root), listing the folder fails the same way."""
    folder.chmod(0)
    try:
        os.listdir(folder)
    except PermissionError:
        return
    real_scandir = os.scandir

    def scandir(path=".", *args, **kwargs):
        if os.fspath(path) == os.fspath(folder):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)


def test_unreadable_subfolder_is_reported(tmp_path, monkeypatch):
    a = _touch_png(tmp_path / "in" / "a.png")
    _touch_png(tmp_path / "in" / "locked" / "b.png")
    locked = tmp_path / "in" / "locked"
    _make_unreadable(locked, monkeypatch)
    try:
        for found in (find_images([tmp_path / "in"]), find_images([str(tmp_path / "in" / "**" / "*.png")])):
            assert found.paths == [a]
            (error,) = found.errors
            assert str(locked) in str(error) and "cannot be read" in str(error)
    finally:
        locked.chmod(0o755)


def test_output_folder_is_never_searched_even_when_walked(tmp_path):
    src = tmp_path / "photos"
    a = _touch_png(src / "a.png")
    _touch_png(src / "out" / "a.png")
    # The output folder inside the folder walked: skipped.
    assert find_images([src], exclude=[src / "out"]).paths == [a]
    # The output folder is the folder walked (or holds it): nothing of it is an input, and it says why.
    for walked in (src, src / "out", str(src / "**" / "*.png")):
        found = find_images([walked], exclude=[src])
        assert found.paths == []
        (error,) = found.errors
        assert "output folder" in str(error)
    # Through a symlink, or spelled differently: compared by real path.
    (tmp_path / "alias").symlink_to(src, target_is_directory=True)
    assert find_images([tmp_path / "alias"], exclude=[src]).paths == []
    assert find_images([src], exclude=[tmp_path / "alias" / ".." / "photos"]).paths == []
    # A file named explicitly is taken even there.
    assert find_images([a], exclude=[src]).paths == [a]


def test_sample_image_ships_with_the_package():
    path = sample_image()
    assert path.is_file() and path.suffix == ".png" and path.stat().st_size < 200_000
    arr = load_image(path)
    assert arr.shape[2] == 3 and 200 <= arr.shape[0] <= 600 and 200 <= arr.shape[1] <= 1200
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 100  # a picture, not a flat fill
    assert psegzoo.sample_image() == path
