"""``psegzoo.load()``, ``Segmenter`` and ``Prediction`` with real models, files and HTTP on 127.0.0.1.

Synthetic checkpoints in the published mmseg and SSSegmentation formats (tests/support/synth.py)
are served by a loopback server through an extra manifest (PSEGZOO_INDEX) whose entries clone
built-in ones with a small test scale (tests/support/served.py), so forwards take milliseconds.
"""
from __future__ import annotations

import io
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open

import psegzoo
from psegzoo import convert, hub
from psegzoo.api import Prediction, Segmenter
from psegzoo.errors import (
    CheckpointError,
    ImageError,
    PredictionError,
    PsegzooError,
    UnverifiedWeightsError,
)
from psegzoo.manifest import get_dataset
from psegzoo.models import build_segmentor, state_shapes
from psegzoo.predictor import resize_image, to_input, tta_scale
from tests.support.http_server import FileServer
from tests.support.hub import scrub_environment
from tests.support.precision import assert_same_prediction
from tests.support.served import (
    MMSEG_BASE,
    SMALL_SCALE,
    SSSEG_BASE,
    hostile_checkpoint,
    mmseg_spec,
    serve_clone,
    sha256_hex,
    ssseg_spec,
    write_index,
)
from tests.support.synth import load_specs, write_mmseg_checkpoint, write_ssseg_checkpoint

GOLDEN = Path(__file__).parent / "data" / "golden"
MM_NAME = "pspnet_r18-d8_apitest_cityscapes"
SS_NAME = "pspnet_resnet50os16_apitest_voc"
EVIL_NAME = "pspnet_r18-d8_apitest-hostile_cityscapes"
SS_SCALE = (102, 68)  # 40x60 -> 68x102: low-res cells fall between output pixels (see the SSSeg test)
REL_TOL = 1e-4


@dataclass
class Zoo:
    server: FileServer
    index: Path
    home: Path  # the module's cache (where the shared Segmenter was loaded)
    mm_file: str
    mm_sha: str
    mm_local: Path  # a copy of the served mmseg checkpoint under its published file name
    ss_sha: str
    evil_marker: Path
    tmp: Path

    def mm_gets(self) -> int:
        return len(self.server.gets(f"/served/{self.mm_file}"))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    mp = pytest.MonkeyPatch()
    scrub_environment(mp)
    server = FileServer()
    try:
        mm_bytes = write_mmseg_checkpoint(mmseg_spec(), tmp / "mm.pth").read_bytes()
        mm = serve_clone(server, MMSEG_BASE, MM_NAME, mm_bytes)
        ss_bytes = write_ssseg_checkpoint(ssseg_spec(), tmp / "ss.pth").read_bytes()
        (tmp / "ss.pth").unlink()
        ss = serve_clone(server, SSSEG_BASE, SS_NAME, ss_bytes, verified=False, scale=SS_SCALE)
        marker = tmp / "hostile-code-ran"
        evil = serve_clone(server, MMSEG_BASE, EVIL_NAME, hostile_checkpoint(marker, mmseg_spec()))
        index = write_index(tmp / "extra_index.json", [mm, ss, evil])
        local = tmp / "local" / mm["weights"]["file"]
        local.parent.mkdir()
        (tmp / "mm.pth").rename(local)
        mp.setenv("PSEGZOO_INDEX", str(index))
        mp.setenv("PSEGZOO_HOME", str(tmp / "home"))
        mp.setenv("PSEGZOO_BACKOFF", "0.01")
        mp.setenv("PSEGZOO_RETRIES", "1")
        mp.setenv("PSEGZOO_TIMEOUT", "10")
        yield Zoo(server=server, index=index, home=tmp / "home", mm_file=mm["weights"]["file"],
                  mm_sha=sha256_hex(mm_bytes), mm_local=local, ss_sha=sha256_hex(ss_bytes), evil_marker=marker,
                  tmp=tmp)
    finally:
        server.close()
        mp.undo()


@pytest.fixture(scope="module")
def seg(zoo) -> Segmenter:
    """The served mmseg entry, loaded once into the module's cache."""
    return psegzoo.load(MM_NAME, device="cpu", progress=False)


@pytest.fixture
def fresh_home(zoo, tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("PSEGZOO_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A 40x60 RGB image with some structure (gradients, a block, noise)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:60]
    img = np.stack([xx * 4, yy * 6, (xx + yy) * 2], axis=-1).astype(np.float64)
    img[10:30, 20:45] = [250, 30, 60]
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def probe() -> torch.Tensor:
    """A normalized 1x3x64x96 input for comparing models."""
    return torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))


def forward(seg: Segmenter, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return seg.model(x.contiguous(memory_format=torch.channels_last))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


# --------------------------------------------------------------------------------------------
# load(): download, verify, convert, cache
# --------------------------------------------------------------------------------------------


def test_load_downloads_verifies_converts_and_caches(zoo, fresh_home, probe, monkeypatch):
    gets = zoo.mm_gets()
    first = psegzoo.load(MM_NAME, device="cpu", progress=False)
    assert zoo.mm_gets() == gets + 1
    entry = psegzoo.get_entry(MM_NAME)
    ckpt = hub.checkpoint_path(entry)
    assert ckpt == fresh_home / "checkpoints" / zoo.mm_file and hub.file_sha256(ckpt) == zoo.mm_sha
    converted = hub.converted_path(entry)
    assert converted == fresh_home / "converted" / zoo.mm_file.replace(".pth", ".safetensors") and converted.is_file()
    meta = metadata(converted)
    assert meta["source_sha256"] == zoo.mm_sha and meta["name"] == MM_NAME
    assert meta["source_file"] == zoo.mm_file and meta["source_format"] == "mmseg"
    assert meta["psegzoo_version"] == psegzoo.__version__
    logits = forward(first, probe)

    # A second load reads the safetensors only: no pickle, no request.
    def no_pickle(*args, **kwargs):
        raise AssertionError("the checkpoint was unpickled again")

    monkeypatch.setattr(convert, "read_checkpoint", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    second = psegzoo.load(MM_NAME, device="cpu", progress=False)
    assert zoo.mm_gets() == gets + 1
    assert torch.equal(forward(second, probe), logits)


def test_stale_or_corrupt_converted_weights_are_regenerated(zoo, fresh_home, probe):
    seg = psegzoo.load(MM_NAME, device="cpu", progress=False)
    expected = forward(seg, probe)
    converted = hub.converted_path(seg.entry)
    gets = zoo.mm_gets()

    converted.write_bytes(b"not safetensors at all")
    again = psegzoo.load(MM_NAME, device="cpu", progress=False)
    assert torch.equal(forward(again, probe), expected)
    assert metadata(converted)["source_sha256"] == zoo.mm_sha

    # Weights converted from another file (another hash) are not used: zeros would give other logits.
    state_dict, meta = convert.load_converted(converted)
    convert.save_converted({k: torch.zeros_like(v) for k, v in state_dict.items()}, converted,
                           dict(meta, source_sha256="0" * 64))
    again = psegzoo.load(MM_NAME, device="cpu", progress=False)
    assert torch.equal(forward(again, probe), expected)
    assert metadata(converted)["source_sha256"] == zoo.mm_sha
    assert zoo.mm_gets() == gets  # converted again from the cached download


def test_local_weights_are_never_downloaded(zoo, fresh_home, seg, probe, tmp_path, caplog):
    requests_before = len(zoo.server.requests)
    expected = forward(seg, probe)
    by_file_name = psegzoo.load(weights=zoo.mm_local, device="cpu")
    assert by_file_name.entry.name == MM_NAME
    assert torch.equal(forward(by_file_name, probe), expected)
    other_name = tmp_path / "my weights.pth"
    shutil.copyfile(zoo.mm_local, other_name)
    with pytest.raises(CheckpointError, match="pass the model name"):
        psegzoo.load(weights=other_name)
    named = psegzoo.load(MM_NAME, weights=other_name, device="cpu")
    assert torch.equal(forward(named, probe), expected)

    out = psegzoo.convert_checkpoint(other_name, tmp_path / "converted.safetensors", name=MM_NAME)
    assert metadata(out)["source_sha256"] == zoo.mm_sha and metadata(out)["name"] == MM_NAME
    from_safetensors = psegzoo.load(weights=out, device="cpu")  # the name comes from its metadata
    assert from_safetensors.entry.name == MM_NAME
    assert torch.equal(forward(from_safetensors, probe), expected)
    with caplog.at_level(logging.WARNING, logger="psegzoo.api"):
        as_builtin = psegzoo.load(MMSEG_BASE, weights=out, device="cpu")  # same architecture, other name
    assert as_builtin.entry.name == MMSEG_BASE and f"was converted for {MM_NAME}" in caplog.text

    assert len(zoo.server.requests) == requests_before
    assert not (fresh_home / "checkpoints").exists()


def test_convert_checkpoint_file_and_name(zoo, fresh_home, seg, probe, tmp_path):
    local = tmp_path / zoo.mm_file
    shutil.copyfile(zoo.mm_local, local)
    out = psegzoo.convert_checkpoint(local)
    assert out == local.with_suffix(".safetensors") and out.is_file()
    meta = metadata(out)
    assert meta["name"] == MM_NAME and meta["source_sha256"] == zoo.mm_sha and meta["source_format"] == "mmseg"
    assert torch.equal(forward(psegzoo.load(weights=out, device="cpu"), probe), forward(seg, probe))

    # By name: downloaded, converted into the cache where load() finds it; -o writes a copy.
    cached = psegzoo.convert_checkpoint(MM_NAME, progress=False)
    assert cached == hub.converted_path(seg.entry) and cached.parent == fresh_home / "converted"
    copy = psegzoo.convert_checkpoint(MM_NAME, tmp_path / "named.safetensors", progress=False)
    assert metadata(copy) == metadata(cached)
    a, _ = convert.load_converted(copy)
    b, _ = convert.load_converted(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CheckpointError, match="does not exist"):
        psegzoo.convert_checkpoint(tmp_path / "missing.pth", name=MM_NAME)


def test_load_refuses_bad_arguments(zoo, tmp_path):
    with pytest.raises(PsegzooError, match="model name"):
        psegzoo.load()
    with pytest.raises(CheckpointError, match="does not exist"):
        psegzoo.load(MM_NAME, weights=tmp_path / "nothing.pth")
    with pytest.raises(PsegzooError, match="unknown dtype"):
        psegzoo.load(MM_NAME, weights=zoo.mm_local, dtype="float8")
    with pytest.raises(psegzoo.UnknownModelError):
        psegzoo.load("pspnet_nonexistent_model_xyz")
    if not torch.cuda.is_available():
        with pytest.raises(PredictionError, match="no CUDA"):
            psegzoo.load(MM_NAME, weights=zoo.mm_local, device="cuda")


def test_bfloat16_weights_predict_float32_outputs(zoo, seg, image):
    low = psegzoo.load(MM_NAME, weights=zoo.mm_local, device="cpu", dtype="bf16")
    assert low.dtype == torch.bfloat16 and next(low.model.parameters()).dtype == torch.bfloat16
    pred = low.predict(image)
    assert pred.logits.dtype == np.float32 and pred.labels.shape == (40, 60)
    assert (pred.labels == seg.predict(image).labels).mean() > 0.95  # bfloat16 keeps ~3 digits


# --------------------------------------------------------------------------------------------
# The model is the reference computation
# --------------------------------------------------------------------------------------------


def test_model_matches_unfused_reference(zoo, seg, probe):
    arch = seg.entry.architecture
    reference = build_segmentor(arch).eval()
    sd, _, fmt = convert.read_checkpoint(zoo.mm_local)
    reference.load_state_dict(convert.convert_state_dict(sd, arch, state_shapes(reference), fmt), strict=True)
    with torch.no_grad():
        expected = reference(probe)
    ours = forward(seg, probe)
    assert ours.shape == (1, 19, 64, 96)
    assert rel_err(ours, expected) < REL_TOL
    # load() folded BatchNorm away: fewer tensors than the reference, same function.
    assert len(seg.model.state_dict()) < len(reference.state_dict())
    assert not seg.model.training and seg.device == torch.device("cpu")


def test_golden_logits_through_load(tmp_path):
    """mmseg's own logits for the synthetic R-18b weights, through load(weights=...) (fused, channels_last)."""
    with safe_open(str(GOLDEN / "pspnet_r18b-d8_4xb2-80k_cityscapes-512x1024.model.safetensors"), "pt") as f:
        golden = {k: f.get_tensor(k) for k in f.keys()}
        file = f.metadata()["checkpoint"]
    specs = load_specs()
    path = write_mmseg_checkpoint(specs.mmseg[specs.mmseg_index[file]], tmp_path / file)
    seg = psegzoo.load(weights=path, device="cpu")
    assert seg.entry.name == "pspnet_r18b-d8_512x1024_80k_cityscapes"
    out = forward(seg, golden["input"])
    assert rel_err(out, golden["logits"]) < REL_TOL


def test_segmenter_knows_its_entry_classes_and_palette(seg):
    cityscapes = get_dataset("cityscapes")
    assert seg.entry.name == MM_NAME and seg.entry.weights.file.startswith(MM_NAME)
    assert seg.classes == cityscapes.classes and len(seg.classes) == 19 == seg.entry.num_classes
    assert seg.classes[0] == "road" and seg.palette == cityscapes.palette
    assert MM_NAME in repr(seg)


def test_checkpoint_with_other_class_count_is_refused(zoo, tmp_path):
    path = write_mmseg_checkpoint(mmseg_spec(), tmp_path / "five.pth", classes=[f"c{i}" for i in range(5)])
    with pytest.raises(CheckpointError, match="5 classes") as info:
        psegzoo.load(MM_NAME, weights=path)
    assert "19" in str(info.value) and "five.pth" in str(info.value)


def test_hostile_pickle_is_refused_and_runs_nothing(zoo, fresh_home, tmp_path):
    # The served bytes really run code when unpickled without weights_only.
    canary = tmp_path / "canary"
    torch.load(io.BytesIO(hostile_checkpoint(canary, mmseg_spec())), weights_only=False)
    assert canary.exists()

    with pytest.raises(CheckpointError, match="refused") as info:
        psegzoo.load(EVIL_NAME, device="cpu", progress=False)
    assert "system" in str(info.value)
    assert not zoo.evil_marker.exists()
    entry = psegzoo.get_entry(EVIL_NAME)
    assert hub.checkpoint_path(entry).is_file()  # its hash was right: downloaded, then refused
    assert not hub.converted_path(entry).exists()


# --------------------------------------------------------------------------------------------
# SSSegmentation: no published hash, direct logits resize
# --------------------------------------------------------------------------------------------


def test_ssseg_entry_trust_on_first_use_and_direct_resize(zoo, fresh_home, image):
    path = "/served/" + psegzoo.get_entry(SS_NAME).weights.file
    with pytest.raises(UnverifiedWeightsError, match="allow_unverified=True"):
        psegzoo.load(SS_NAME, device="cpu", progress=False)
    assert zoo.server.gets(path) == []
    assert not (fresh_home / "trusted").exists()

    seg = psegzoo.load(SS_NAME, device="cpu", allow_unverified=True, progress=False)
    assert len(zoo.server.gets(path)) == 1
    assert (fresh_home / "trusted" / f"{SS_NAME}.sha256").read_text().split()[0] == zoo.ss_sha
    assert metadata(hub.converted_path(seg.entry))["source_format"] == "ssseg"
    assert seg.entry.test.resize_logits == "direct" and len(seg.classes) == 21

    pred = seg.predict(image)
    assert pred.labels.shape == (40, 60) and pred.logits.shape == (21, 40, 60)
    # SSSegmentation: the low-resolution logits go straight to the original size.
    test = seg.entry.test
    x = to_input(resize_image(image, SS_SCALE), test.mean, test.std)
    assert x.shape[-2:] == (68, 102)
    with torch.inference_mode():
        low = seg.model.forward_lowres(x.contiguous(memory_format=torch.channels_last))
        via_input = F.interpolate(seg.model(x), size=(40, 60), mode="bilinear", align_corners=False)
    assert low.shape[-2:] == (5, 7)  # output stride 16
    direct = F.interpolate(low, size=(40, 60), mode="bilinear", align_corners=False)[0]
    assert rel_err(torch.from_numpy(pred.logits), direct) < 1e-5
    # mmseg's two resizes (to the input size, then the original) give other values (1.7e-4 here).
    assert rel_err(torch.from_numpy(pred.logits), via_input[0]) > 5e-5

    # Later uses verify against the trust record; no flag needed.
    again = psegzoo.load(SS_NAME, device="cpu", progress=False)
    assert_same_prediction(again.predict(image).labels, pred)
    assert len(zoo.server.gets(path)) == 1


# --------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------


def test_array_pil_and_path_give_the_same_prediction(seg, image, tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(image).save(path)
    from_array = seg.predict(image)
    from_pil = seg.predict(Image.fromarray(image))
    from_path = seg.predict(path)
    assert np.array_equal(from_array.labels, from_pil.labels)
    assert np.array_equal(from_array.labels, from_path.labels)
    assert np.array_equal(from_array.logits, from_path.logits)
    assert from_path.source == str(path) and from_array.source is None


def test_prediction_fields_and_files(seg, image, tmp_path):
    pred = seg.predict(image)
    assert isinstance(pred, Prediction)
    assert pred.labels.shape == (40, 60) and np.issubdtype(pred.labels.dtype, np.integer)
    assert pred.logits.shape == (19, 40, 60) and pred.logits.dtype == np.float32
    assert np.array_equal(pred.labels, pred.logits.argmax(axis=0))
    assert len(np.unique(pred.labels)) > 1  # a real map, not one class everywhere
    probs = pred.probs()
    assert probs.shape == (19, 40, 60) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(pred.logits), 0).numpy(), atol=1e-6)
    np.testing.assert_allclose(pred.confidence(), probs.max(axis=0), atol=1e-6)
    lut = np.array(seg.palette, dtype=np.uint8)
    color = pred.colorize()
    assert color.shape == (40, 60, 3) and color.dtype == np.uint8 and np.array_equal(color, lut[pred.labels])
    assert np.array_equal(pred.overlay(0.0), image) and np.array_equal(pred.overlay(1.0), color)
    half = pred.overlay(0.5)
    assert half.shape == (40, 60, 3) and np.abs(half.astype(int) - (image.astype(int) + color) / 2).max() <= 1

    saved = pred.save(tmp_path / "labels.png")
    with Image.open(saved) as im:
        assert im.mode == "P" and im.size == (60, 40)
        assert np.array_equal(np.asarray(im), pred.labels)
        assert im.getpalette()[: 3 * 19] == lut.reshape(-1).tolist()

    written = pred.write(tmp_path / "out", "sub/x", overlay=True, color=True, probs="npy", logits=True, summary=True)
    names = sorted(p.relative_to(tmp_path / "out").as_posix() for p in written)
    assert names == ["sub/x.json", "sub/x.png", "sub/x_color.png", "sub/x_logits.npy", "sub/x_overlay.png",
                     "sub/x_probs.npy"]
    np.testing.assert_allclose(np.load(tmp_path / "out/sub/x_probs.npy"), pred.confidence(), atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "out/sub/x_logits.npy"), pred.logits, rtol=1e-3, atol=1e-3)
    areas = pred.class_areas()
    assert [a["index"] for a in areas] == sorted(np.unique(pred.labels), key=lambda i: -(pred.labels == i).sum())
    assert areas[0]["name"] == seg.classes[areas[0]["index"]]
    doc = json.loads((tmp_path / "out/sub/x.json").read_text())
    assert doc["classes"] == areas
    assert doc["model"] == MM_NAME and (doc["width"], doc["height"]) == (60, 40)
    assert sum(c["pixels"] for c in doc["classes"]) == 40 * 60
    assert abs(sum(c["percent"] for c in doc["classes"]) - 100.0) < 1e-2
    with pytest.raises(psegzoo.OutputError):
        pred.write(tmp_path / "out", "y", probs="tiff")


def test_tta_averages_probabilities(seg, image):
    pred = seg.predict(image, flip=True, scales=[0.5, 1.0])
    assert pred.is_probs and pred.scores.shape == (19, 40, 60) and pred.scores.dtype == np.float32
    # The scores are averaged probabilities: they sum to one and probs() gives them back.
    np.testing.assert_allclose(pred.scores.sum(axis=0), 1.0, atol=1e-4)
    np.testing.assert_allclose(pred.probs(), pred.scores, atol=1e-5)
    np.testing.assert_allclose(np.exp(pred.log_scores()), pred.scores, atol=1e-6)
    assert np.array_equal(pred.labels, pred.scores.argmax(axis=0))
    with pytest.warns(DeprecationWarning, match="log-probabilities"):  # the old name still answers
        np.testing.assert_allclose(pred.logits, pred.log_scores())

    # Two scales without flip: the mean of each single view's softmax.
    multi = seg.predict(image, scales=[0.5, 1.0])
    small = seg.predict(image, scale=tta_scale(SMALL_SCALE, 0.5))
    full = seg.predict(image)
    np.testing.assert_allclose(multi.probs(), (small.probs() + full.probs()) / 2, atol=1e-5)
    assert not np.allclose(small.probs(), full.probs(), atol=1e-3)  # the views really differ


def test_slide_with_crop_covering_the_image_equals_whole(seg, image):
    whole = seg.predict(image)
    slide = seg.predict(image, mode="slide", crop_size=(128, 128), stride=(64, 64))
    assert_same_prediction(slide.labels, whole)  # a padded window is another computation: near-ties may flip
    np.testing.assert_allclose(slide.logits, whole.logits, rtol=1e-5, atol=1e-5 * np.abs(whole.logits).max())
    windows = seg.predict(image, mode="slide", crop_size=(32, 48), stride=(16, 24), batch_windows=3)
    assert windows.labels.shape == (40, 60) and windows.logits.shape == (19, 40, 60)
    assert not np.allclose(windows.logits, whole.logits, atol=1e-3)  # real windows see less context


@pytest.mark.parametrize("overrides, message", [
    (dict(mode="slide", crop_size=(32, 32), stride=(64, 64)), "larger than crop_size"),
    (dict(mode="slide", crop_size=32, stride=(16, 48)), "larger than crop_size"),
    (dict(crop_size=(32, 32)), "slide mode only"),
    (dict(mode="tiles"), "mode must be one of"),
    (dict(scale=(0, 64)), "positive integers"),
    (dict(scales=[]), "at least one ratio"),
    (dict(scales=[1.0, -0.5]), "positive numbers"),
    (dict(batch_windows=0, mode="slide"), "positive integer"),
])
def test_invalid_overrides_raise_prediction_error(seg, image, overrides, message):
    with pytest.raises(PredictionError, match=message):
        seg.predict(image, **overrides)


def test_inference_settings_validate_before_any_work(zoo):
    settings = psegzoo.inference_settings(MM_NAME, mode="slide", crop_size=(32, 48))
    assert settings.stride == (21, 32) and settings.scale == SMALL_SCALE
    with pytest.raises(PredictionError, match="larger than crop_size"):
        psegzoo.inference_settings(MM_NAME, mode="slide", crop_size=(32, 32), stride=(64, 64))


def test_predict_many_skips_a_bad_file_and_goes_on(seg, image, tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(image).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"this is not a png")
    Image.fromarray(image[:, ::-1]).save(folder / "sub" / "c.jpg", quality=95)
    results = list(seg.predict_many(folder))
    assert [type(r) for r in results] == [Prediction, ImageError, Prediction]
    assert "b.png" in str(results[1])
    assert results[0].source == str(folder / "a.png") and results[2].source == str(folder / "sub" / "c.jpg")
    assert_same_prediction(results[0].labels, seg.predict(image))  # may run in a batch: near-ties may flip

    inputs = [image, np.zeros((4, 4), np.float32), str(tmp_path / "none.png"), Image.fromarray(image)]
    mixed = list(seg.predict_many(inputs))
    assert [type(r) for r in mixed] == [Prediction, ImageError, ImageError, Prediction]
    assert_same_prediction(mixed[0].labels, mixed[3])
